"""Probe: does reading the attention's cotangents transposed once make its backward faster?

XLA:CPU leaves the two backward products whose left operand is used transposed (dK =
dS^T Q, dV = P^T dO) to Eigen dot thunks; YNNPACK takes only plain and right-transposed
layouts (experiments/benchmarks/README.md, "Vision Transformer"). This probe writes the two
attention products as `jax.custom_jvp` functions whose tangent rules put a materialised
transpose behind `lax.optimization_barrier` (so that XLA cannot fold it back into the dot):
reverse mode then runs all four backward products as plain YNNPACK products, at the price of
two [B, H, T, T] transposes. It checks that gradients and JVPs agree with plain einsums, counts
the compiled program's Eigen `dot` ops, and times forward + backward of the attention core
(scores, `masked_softmax`, weighted values) of one patch-4 ViT block (B 128, 4 heads, 65
tokens of 32), interleaved. Not a test; not used by the library (see the README for the
result).

    python experiments/benchmarks/probe_attention_layouts.py [--rounds=30]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import jax  # noqa: E402
from jax import lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cnnrnn.nn.attention import masked_softmax  # noqa: E402


def _swap(x):
  return jnp.swapaxes(x, -1, -2)


@jax.custom_jvp
def scores(q, k):
  """[B, H, Q, D] x [B, H, K, D] -> [B, H, Q, K]."""
  return jnp.einsum("bhqd,bhkd->bhqk", q, k)


@scores.defjvp
def _scores_jvp(primals, tangents):
  q, k = primals
  dq, dk = tangents
  # Q dK^T as (dK Q^T)^T behind a barrier: its transpose reads the cotangent transposed once.
  tangent = jnp.einsum("bhqd,bhkd->bhqk", dq, k) + _swap(
      lax.optimization_barrier(jnp.einsum("bhkd,bhqd->bhkq", dk, q)))
  return scores(q, k), tangent


@jax.custom_jvp
def weighted(p, v):
  """[B, H, Q, K] x [B, H, K, D] -> [B, H, Q, D]."""
  return jnp.einsum("bhqk,bhkd->bhqd", p, v)


@weighted.defjvp
def _weighted_jvp(primals, tangents):
  p, v = primals
  dp, dv = tangents
  pt = lax.optimization_barrier(_swap(p))  # [B, H, K, Q], materialised once
  tangent = jnp.einsum("bhqk,bhkd->bhqd", dp, v) + jnp.einsum("bhkq,bhkd->bhqd", pt, dv)
  return weighted(p, v), tangent


def plain(q, k, v):
  return jnp.einsum("bhqk,bhkd->bhqd",
                    masked_softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k), None), v)


def transposed_once(q, k, v):
  return weighted(masked_softmax(scores(q, k), None), v)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=30)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  q, k, v, ct = (jnp.asarray(rng.normal(size=(128, 4, 65, 32)), jnp.float32) for _ in range(4))
  steps = {}
  for name, f in (("plain", plain), ("transposed once", transposed_once)):
    steps[name] = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * ct), (0, 1, 2)))
    entry = steps[name].lower(q, k, v).compile().as_text().split("\nENTRY")[1]
    print(f"{name}: {entry.count(' dot(')} products left to Eigen, "
          f"{entry.count('__ynn_fusion')} YNNPACK fusions")
  grads = [steps[n](q, k, v) for n in steps]
  print("largest gradient difference:",
        max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(*grads)))
  jvps = [jax.jvp(f, (q, k, v), (k, v, q))[1] for f in (plain, transposed_once)]
  print("largest JVP difference:", float(jnp.max(jnp.abs(jvps[0] - jvps[1]))))
  times = {n: [] for n in steps}
  for _ in range(args.rounds):
    for name, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(q, k, v))
      times[name].append(time.perf_counter() - start)
  for name, t in times.items():
    print(f"{name}: median {1e3 * np.median(t):.2f} ms, min {1e3 * min(t):.2f} ms")


if __name__ == "__main__":
  main()
