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
