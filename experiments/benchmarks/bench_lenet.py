"""LeNet-5 training step: cnnrnn (the trainer's own jitted step) vs PyTorch eager, CPU.

One step = forward + backward + SGD-momentum update, float32, batch 256 of 32x32x1, 10
classes, the same architecture on both sides (conv 6@5x5, max-pool, conv 16@5x5, max-pool,
dense 120, 84, 10, ReLU). Interleaved A B A B; medians. Not a test.

    python experiments/benchmarks/bench_lenet.py [--batch=256] [--rounds=10]
    python experiments/benchmarks/bench_lenet.py --xla_flags=--xla_cpu_experimental_ynn_fusion_type=
    python experiments/benchmarks/bench_lenet.py --flax_pool   # flax.linen.max_pool instead
    python experiments/benchmarks/bench_lenet.py --xla_convs   # also XLA's convolutions

`cnnrnn (jax)` is what the trainer runs on one CPU device: its step under `accel="auto"`
(the native convolution kernels of cnnrnn.accel). `--xla_convs` adds the same step traced
with `accel="xla"` (XLA's convolutions).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

if __name__ == "__main__":
  harness.xla_flags_from_argv(sys.argv)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cnnrnn import models, tasks  # noqa: E402
from cnnrnn.models import lenet  # noqa: E402
from cnnrnn.train import steps  # noqa: E402
from cnnrnn.train.state import TrainState  # noqa: E402

LR, MOMENTUM = 0.05, 0.9


def jax_competitor(batch: int, flax_pool: bool = False, mode: str = "auto") -> harness.JaxStep:
  """The trainer's step of `lenet5` (accel `mode`) on a random batch, as a `harness.JaxStep`."""
  if flax_pool:  # The straightforward version, for the record.
    lenet._POOLS["max"] = lambda x, w: nn.max_pool(x, w, strides=w)
  model = models.create("lenet5")
  task = tasks.create("classification", num_classes=10)
  tx = optax.sgd(LR, momentum=MOMENTUM)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))["params"]
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                     opt_state=tx.init(params), rng=jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.normal(size=(batch, 32, 32, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, batch), jnp.int32)}
  return harness.JaxStep(steps.make_train_step(model, task, tx), state, data, mode=mode)


def torch_competitor(batch: int):
  """The same step in PyTorch eager: a zero-argument callable."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top

  model = tnn.Sequential(
      tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2),
      tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
      tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))
  opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
  loss_fn = tnn.CrossEntropyLoss()
  g = torch.Generator().manual_seed(0)
  x, y = torch.randn(batch, 1, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)

  def run():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()

  return run


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--flax_pool", action="store_true")
  p.add_argument("--xla_flags", default="")
  p.add_argument("--xla_convs", action="store_true", help="also time XLA's convolutions")
  harness.add_malloc_flag(p)
  args = p.parse_args()
  harness.apply_malloc(args.malloc)
  import torch  # pylint: disable=g-import-not-at-top

  competitors = {"pytorch eager": torch_competitor(args.batch),
                 "cnnrnn (jax)": jax_competitor(args.batch, args.flax_pool)}
  if args.xla_convs:
    competitors["cnnrnn, XLA convolutions"] = jax_competitor(args.batch, args.flax_pool, "xla")
  times = harness.interleave(competitors, rounds=args.rounds, steps=args.steps)
  title = (f"LeNet-5 train step, batch {args.batch} (torch {torch.__version__}, jax {jax.__version__}, "
           f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}{', flax max_pool' if args.flax_pool else ''})")
  print(harness.table(times, "pytorch eager", title))


if __name__ == "__main__":
  main()
