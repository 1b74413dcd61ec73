"""Side-by-side timing: competitors interleaved (A B A B ...), medians, ratios.

Other processes share these CPUs; interleaving makes load hit every competitor alike and
the median ignores outliers. Each competitor is a zero-argument callable that runs one
full step and blocks until its result is ready.
"""

import argparse
from collections.abc import Callable
import os
import platform
import statistics
import time


def xla_flags_from_argv(argv: list[str]) -> None:
  """Appends `--xla_flags=...` from the command line to $XLA_FLAGS; call before importing jax."""
  for arg in argv:
    if arg.startswith("--xla_flags="):
      extra = arg.split("=", 1)[1]
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + extra).strip()


_malloc = "glibc defaults"


def add_malloc_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                      help="reuse: keep freed host memory for reuse, as the trainer does "
                           "(cnnrnn.train.host_memory; the whole process, PyTorch too); "
                           "default: glibc's defaults")


def torch_comparison_parser(doc: str, *, tiny: bool = True) -> argparse.ArgumentParser:
  """A parser with the flags every comparison with PyTorch shares: --rounds, --steps,
  --tiny (if `tiny`), --torch_threads, --xla_flags (read by `xla_flags_from_argv`) and
  --malloc; the description is the first line of `doc`."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per turn")
  if tiny:
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes: a smoke run, not a timing")
  parser.add_argument("--torch_threads", type=int, default=None)
  parser.add_argument("--xla_flags", default="", help="appended to $XLA_FLAGS")
  add_malloc_flag(parser)
  return parser


def setup_torch_comparison(args: argparse.Namespace, extra: str = "") -> None:
  """Applies --malloc and --torch_threads, then prints the versions line (`extra` before
  the XLA flags). Call before JAX's backend starts."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  apply_malloc(args.malloc)
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{extra}XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n")


class JaxStep:
  """One training step of a JAX competitor, compiled as the trainer compiles it.

  `step(state, *args) -> (state, out)` is traced under `cnnrnn.accel` mode `mode` (resolved
  once, here: "auto" is what `python -m cnnrnn.main` runs, "xla" plain XLA) and jitted with
  the state donated. Calling the object runs one step on the state it carries and blocks
  until `out` is ready (a competitor for `interleave`).
  """

  def __init__(self, step: Callable, state, *args, mode: str = "auto"):
    import jax  # pylint: disable=g-import-not-at-top

    from cnnrnn import accel  # pylint: disable=g-import-not-at-top
    self._step, self.state, self.args = step, state, args
    self.fn = jax.jit(accel.accelerate(step, accel.resolve(mode)), donate_argnums=0)

  def __call__(self) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    self.state, out = self.fn(self.state, *self.args)
    jax.block_until_ready(out)

  def flops(self) -> float:
    """Floating-point operations of one step by XLA's cost analysis of its plain-XLA trace
    (nothing run; the native kernels' calls would count as none). XLA counts the body of a
    loop (`lax.scan`) once, whatever its trip count: count recurrent steps by hand."""
    import jax  # pylint: disable=g-import-not-at-top

    from cnnrnn import accel  # pylint: disable=g-import-not-at-top
    lowered = jax.jit(accel.accelerate(self._step, "xla")).lower(self.state, *self.args)
    return float(lowered.cost_analysis()["flops"])


def translation_train_step(model, tx, src, tgt, key, pad: int, mode: str = "auto") -> JaxStep:
  """The training step of a sequence-to-sequence `model` with optimizer `tx` on the batch
  (src [B, S], tgt [B, T + 1]) as a `JaxStep` traced under accel mode `mode`: teacher
  forcing on tgt[:, :-1], cross-entropy against tgt[:, 1:] ignoring `pad`, dropout keys
  split from `key`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  params = jax.jit(model.init)(key, src, tgt[:, :-1])["params"]
  state = {"params": params, "opt": tx.init(params), "key": key}

  def loss_fn(params, key, src, tgt):
    logits = model.apply({"params": params}, src, tgt[:, :-1], train=True,
                         rngs={"dropout": key})
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, tgt[:, 1:])
    weights = (tgt[:, 1:] != pad).astype(losses.dtype)
    return (losses * weights).sum() / weights.sum()

  def step(state, src, tgt):
    key, sub = jax.random.split(state["key"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], sub, src, tgt)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt, "key": key}, loss

  return JaxStep(step, state, jnp.asarray(src), jnp.asarray(tgt), mode=mode)


def apply_malloc(mode: str) -> None:
  """Applies `--malloc`; call before JAX's backend starts (the first computation)."""
  global _malloc
  from cnnrnn.train import host_memory  # pylint: disable=g-import-not-at-top
  if mode == "reuse" and host_memory.reuse_freed_memory():
    _malloc = "freed memory reused"


def interleave(competitors: dict[str, Callable[[], None]], *, rounds: int = 10, steps: int = 5,
               warmup: int = 3) -> dict[str, list[float]]:
  """Runs `rounds` rounds of `steps` timed calls of each competitor in turn.

  Returns:
    name -> per-step wall times in seconds (rounds * steps of them).
  """
  for fn in competitors.values():
    for _ in range(warmup):  # Compilation, allocator and cache warm-up.
      fn()
  times = {name: [] for name in competitors}
  for _ in range(rounds):
    for name, fn in competitors.items():
      for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
  return times


def table(times: dict[str, list[float]], baseline: str, title: str) -> str:
  """A markdown table of median/min ms per step and the speed ratio baseline/competitor."""
  base = statistics.median(times[baseline])
  lines = [f"### {title}", "",
           f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
           f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, malloc: {_malloc}", "",
           f"| competitor | median ms/step | min ms/step | speed vs {baseline} |",
           "|---|---:|---:|---:|"]
  for name, t in times.items():
    med = statistics.median(t)
    lines.append(f"| {name} | {med * 1e3:.1f} | {min(t) * 1e3:.1f} | {base / med:.2f}x |")
  return "\n".join(lines)
