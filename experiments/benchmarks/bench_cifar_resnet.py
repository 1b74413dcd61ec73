"""CIFAR ResNet-20 training step: cnnrnn (JAX, jit) vs PyTorch eager on CPU, in one run.

One step = forward + backward + SGD-momentum update, float32, batch 128 of 32x32x3, 10
classes. The PyTorch model below is the same architecture (He et al. 2015 section 4.2,
option-A shortcuts, 269,722 parameters). The two are interleaved (A B A B ...) so that load
from other processes hits both alike; the table reports medians over all timed steps.

    python experiments/benchmarks/bench_cifar_resnet.py
    python experiments/benchmarks/bench_cifar_resnet.py --xla_flags=--xla_cpu_experimental_ynn_fusion_type=

XLA flags must be set before JAX starts, hence the flag (it is appended to $XLA_FLAGS).
`cnnrnn (jax)` is what the trainer runs on one CPU device: its step under `accel="auto"`
(the native convolution and BatchNorm kernels of cnnrnn.accel). `--xla_convs` adds the same
step traced with `accel="xla"`.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import harness  # noqa: E402


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--depth", type=int, default=20)
  p.add_argument("--rounds", type=int, default=10, help="A B alternations")
  p.add_argument("--steps", type=int, default=5, help="timed steps per competitor per round")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for the JAX side")
  p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--xla_convs", action="store_true",
                 help="also time the step traced with XLA's convolutions and BatchNorm")
  harness.add_malloc_flag(p)
  return p.parse_args()


if __name__ == "__main__":
  harness.xla_flags_from_argv(sys.argv)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cnnrnn import models  # noqa: E402

LR, MOMENTUM = 0.1, 0.9


def jax_competitor(depth: int, images: np.ndarray, labels: np.ndarray,
                   mode: str = "auto") -> harness.JaxStep:
  """The train step of cnnrnn's CIFAR ResNet (images [B, 32, 32, 3]) under accel `mode`."""
  batch = images.shape[0]
  model = models.create(f"cifar_resnet{depth}")
  x = jnp.zeros((batch, 32, 32, 3), jnp.float32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)
  tx = optax.sgd(LR, momentum=MOMENTUM)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  def loss_fn(params, batch_stats, images, labels):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates["batch_stats"]

  def step(state, images, labels):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  return harness.JaxStep(step, state, jnp.asarray(images), jnp.asarray(labels), mode=mode)


def torch_step_fn(depth: int):
  """The same architecture, loss and optimizer in PyTorch eager mode: (step(images [B, 3,
  32, 32], labels [B]), parameter count, the torch package)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class Block(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      s = x
      if self.stride != 1 or self.extra:  # option A: subsample, zero-pad channels
        s = F.pad(x[:, :, ::self.stride, ::self.stride],
                  (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + s)

  class ResNet(nn.Module):

    def __init__(self, n):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(16)
      blocks, cin = [], 16
      for s, width in enumerate((16, 32, 64)):
        for b in range(n):
          blocks.append(Block(cin, width, 2 if (s > 0 and b == 0) else 1))
          cin = width
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(64, 10)

    def forward(self, x):
      x = self.blocks(F.relu(self.bn1(self.conv1(x))))
      return self.fc(x.mean(dim=(2, 3)))

  model = ResNet((depth - 2) // 6).train()
  opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

  def step(images, labels):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    return loss

  n_params = sum(p.numel() for p in model.parameters())
  return step, n_params, torch


def torch_competitor(depth: int, images: np.ndarray, labels: np.ndarray):
  """The PyTorch step on this NHWC batch, as a zero-argument callable."""
  import torch  # pylint: disable=g-import-not-at-top
  tstep, _, _ = torch_step_fn(depth)
  timages = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  tlabels = torch.from_numpy(labels.astype(np.int64))
  return lambda: tstep(timages, tlabels)


def data(batch: int):
  """A random CIFAR-shaped batch: images [B, 32, 32, 3] float32, labels [B] int32."""
  rng = np.random.RandomState(0)
  return (rng.randn(batch, 32, 32, 3).astype(np.float32),
          rng.randint(0, 10, batch).astype(np.int32))


def main():
  args = parse_args()
  harness.apply_malloc(args.malloc)  # Before JAX's backend starts.
  images, labels = data(args.batch)

  ours = jax_competitor(args.depth, images, labels)
  t0 = time.perf_counter()
  ours()
  compile_s = time.perf_counter() - t0
  n_jax = sum(x.size for x in jax.tree.leaves(ours.state[0]))

  runners = {"cnnrnn (jax)": ours}
  if args.xla_convs:
    runners["cnnrnn, XLA convolutions"] = jax_competitor(args.depth, images, labels, "xla")
  if not args.skip_torch:
    import torch  # pylint: disable=g-import-not-at-top
    if args.torch_threads:
      torch.set_num_threads(args.torch_threads)
    n_torch = torch_step_fn(args.depth)[1]
    if n_torch != n_jax:
      raise SystemExit(f"parameter counts differ: torch {n_torch}, jax {n_jax}")
    runners = {"pytorch eager": torch_competitor(args.depth, images, labels), **runners}

  times = harness.interleave(runners, rounds=args.rounds, steps=args.steps, warmup=args.warmup)
  title = (f"cifar_resnet{args.depth} train step, batch {args.batch}, {n_jax:,} params (jax "
           f"{jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, jax compile "
           f"{compile_s:.1f} s)")
  print(harness.table(times, next(iter(times)), title))


if __name__ == "__main__":
  main()
