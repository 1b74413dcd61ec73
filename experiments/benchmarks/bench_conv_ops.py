"""Single convolutions: cnnrnn's native kernels vs XLA's vs PyTorch's, forward and both gradients.

For each shape (the 3x3 layers of the CIFAR ResNets at batch 128, LeNet-5's two layers at
batch 256) times, interleaved, the forward convolution, its input gradient and its weight
gradient: `cnnrnn.accel.conv2d` (jit), `lax.conv_general_dilated` and its VJP (jit),
and `torch.nn.functional.conv2d` with `torch.autograd.grad` (eager, NCHW). Medians; GFLOP/s
counts 2 * B * Ho * Wo * K * K * Cin * Cout per operation. Not a test.

    python experiments/benchmarks/bench_conv_ops.py [--rounds=3] [--steps=15]
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

harness.xla_flags_from_argv(sys.argv)

import jax  # noqa: E402
from jax import lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cnnrnn import accel  # noqa: E402

# (name, batch, height=width, cin, cout, kernel, padding)
SHAPES = [
    ("ResNet-20 stage 1", 128, 32, 16, 16, 3, 1),
    ("ResNet-20 stage 2", 128, 16, 32, 32, 3, 1),
    ("ResNet-20 stage 3", 128, 8, 64, 64, 3, 1),
    ("LeNet-5 conv1", 256, 32, 1, 6, 5, 0),
    ("LeNet-5 conv2", 256, 14, 6, 16, 5, 0),
]


def jax_ops(conv, x, w, dy):
  """Jitted forward, input-gradient and weight-gradient functions of `conv(x, w)`."""
  fwd = jax.jit(conv)
  dx = jax.jit(lambda w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  dw = jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  block = jax.block_until_ready
  return {"forward": lambda: block(fwd(x, w)), "input grad": lambda: block(dx(w, dy)),
          "weight grad": lambda: block(dw(x, dy))}


def torch_ops(torch, x, w, dy, pad):
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
  tdy = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())
  conv = lambda: torch.nn.functional.conv2d(tx, tw, padding=pad)

  def forward():
    with torch.no_grad():
      conv()

  ty = conv()  # One forward graph, kept: the gradients below time the backward pass only.
  return {"forward": forward,
          "input grad": lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True)[0],
          "weight grad": lambda: torch.autograd.grad(ty, tw, tdy, retain_graph=True)[0]}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=3)
  # Long runs per competitor: after a switch, the other side's threads may still spin
  # (PyTorch's OpenMP, XLA's Eigen pool) and slow the first calls of a few milliseconds.
  p.add_argument("--steps", type=int, default=15)
  p.add_argument("--xla_flags", default="")
  args = p.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  ok, why = accel.available()
  if not ok:
    raise SystemExit(f"native kernels unavailable: {why}")

  rows = []
  for name, b, h, cin, cout, k, pad in SHAPES:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, h, h, cin), np.float32)
    w = rng.standard_normal((k, k, cin, cout), np.float32)
    ho = h + 2 * pad - k + 1
    dy = rng.standard_normal((b, ho, ho, cout), np.float32)
    gflop = 2 * b * ho * ho * k * k * cin * cout / 1e9
    xla = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mine = lambda x, w: accel.conv2d(x, w, (pad, pad))
    args_j = (jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy))
    sides = {"cnnrnn native": jax_ops(mine, *args_j), "XLA": jax_ops(xla, *args_j),
             "pytorch": torch_ops(torch, x, w, dy, pad)}
    for op in ("forward", "input grad", "weight grad"):
      times = harness.interleave({s: fns[op] for s, fns in sides.items()}, rounds=args.rounds,
                                 steps=args.steps, warmup=2)
      med = {s: statistics.median(t) * 1e3 for s, t in times.items()}
      rows.append((f"{name} ({b}x{h}x{h}x{cin} -> {cout}, {k}x{k})", op, med, gflop))

  print(f"### Single convolutions (jax {jax.__version__}, torch {torch.__version__}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, {os.cpu_count()} CPUs); median ms "
        "(GFLOP/s)\n")
  print("| layer | op | cnnrnn native | XLA | PyTorch | native vs PyTorch |")
  print("|---|---|---:|---:|---:|---:|")
  for layer, op, med, gflop in rows:
    cell = lambda s: f"{med[s]:.2f} ({gflop / med[s] * 1e3:.0f})"
    print(f"| {layer} | {op} | {cell('cnnrnn native')} | {cell('XLA')} | {cell('pytorch')} | "
          f"{med['pytorch'] / med['cnnrnn native']:.2f}x |")


if __name__ == "__main__":
  main()
