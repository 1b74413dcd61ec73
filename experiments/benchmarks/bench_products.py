"""The products of the ViT steps that run on the native kernel, alone: cnnrnn's kernel, XLA,
PyTorch (MKL).

Each product c = op(a) op(b) (op: the last two axes swapped, or not) three ways: `native`,
the `cnnrnn_matmul` kernel as `cnnrnn.accel` calls it; `xla`, `lax.dot_general` jitted
(YNNPACK, after a transposing copy of a for a^T b, or Eigen); `torch`, `torch.matmul` of
the operands viewed transposed (MKL, reading them in place). One call each in turn,
`--rounds` times (experiments/benchmarks/harness.py); medians and minima. The shapes are
the weight gradients (a^T b) and the attention's batched products (Q K^T and dO V^T: a b^T;
P V and dS K: a b; dK, dV: a^T b) of the two ViT steps of `bench_vit.py`. Not a test.

    python experiments/benchmarks/bench_products.py [--rounds=40] [--torch_threads=1] [--shapes=P V]
    taskset -c 0 python experiments/benchmarks/bench_products.py --torch_threads=1  # one core

Emulating an AVX2 CPU on an AVX-512 one: `--ynnpack_isa=avx2` and the environment of
`run_all.py --isa=avx2` (XLA_FLAGS=--xla_cpu_max_isa=AVX2, CNNRNN_NATIVE_MAX_ISA=avx2,
ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

if __name__ == "__main__":
  harness.xla_flags_from_argv(sys.argv)

SHAPES = {  # name -> (a's shape, b's shape, transpose_a, transpose_b)
    "ViT-Ti q/k/v": ((3152, 192), (3152, 576), True, False),
    "ViT-Ti fc1": ((3152, 192), (3152, 768), True, False),
    "ViT-Ti fc2": ((3152, 768), (3152, 192), True, False),
    "ViT-Ti dK, dV": ((48, 197, 197), (48, 197, 64), True, False),
    "ViT-Ti Q K^T, dO V^T": ((48, 197, 64), (48, 197, 64), False, True),
    "ViT-Ti P V, dS K": ((48, 197, 197), (48, 197, 64), False, False),
    "patch-4 q/k/v": ((8320, 128), (8320, 384), True, False),
    "patch-4 fc2": ((8320, 256), (8320, 128), True, False),
    "patch-4 dK, dV": ((512, 65, 65), (512, 65, 32), True, False),
    "patch-4 Q K^T, dO V^T": ((512, 65, 32), (512, 65, 32), False, True),
    "patch-4 P V, dS K": ((512, 65, 65), (512, 65, 32), False, False),
}
TINY = {"tiny a^T b": ((40, 24), (40, 16), True, False),
        "tiny a b^T": ((3, 24, 40), (3, 16, 40), False, True)}


def _op(x, transpose):
  return x.swapaxes(-1, -2) if transpose else x


def competitors(a_shape, b_shape, transpose_a=True, transpose_b=False, seed=0):
  """name -> one blocking call of the product, after checking that all three agree."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from cnnrnn.accel import native  # pylint: disable=g-import-not-at-top
  from cnnrnn.accel import products  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  a = rng.standard_normal(a_shape, np.float32)
  b = rng.standard_normal(b_shape, np.float32)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  form = dict(transpose_a=transpose_a, transpose_b=transpose_b)
  want = np.matmul(_op(a.astype(np.float64), transpose_a), _op(b, transpose_b))
  out = jax.ShapeDtypeStruct(want.shape, jnp.float32)
  kernel = jax.jit(lambda x, y: native.ffi_call("cnnrnn_matmul", out, x, y, **form))
  xla = jax.jit(lambda x, y: products.reference_matmul(x, y, **form))
  ta, tb = _op(ta, transpose_a), _op(tb, transpose_b)
  scale = np.abs(want).max()
  for name, got in (("native", kernel(ja, jb)), ("xla", xla(ja, jb)),
                    ("torch", torch.matmul(ta, tb).numpy())):
    err = np.abs(np.asarray(got) - want).max() / scale
    if err > 1e-5:
      raise AssertionError(f"{name}: relative error {err:.1e} on {a_shape}, {b_shape}, {form}")
  return {"native": lambda: kernel(ja, jb).block_until_ready(),
          "xla": lambda: xla(ja, jb).block_until_ready(),
          "torch": lambda: torch.matmul(ta, tb)}


def main():
  parser = harness.torch_comparison_parser(__doc__)
  parser.set_defaults(rounds=40, steps=1)
  parser.add_argument("--ynnpack_isa", choices=("avx2",), default=None,
                      help="cap YNNPACK (XLA's matmul library) at this ISA (ynnpack_isa.py)")
  parser.add_argument("--shapes", default=None,
                      help="comma-separated parts of the names of the products to time "
                           "(e.g. 'ViT-Ti,dK'); default: all")
  args = parser.parse_args()
  if args.ynnpack_isa:
    import ynnpack_isa  # pylint: disable=g-import-not-at-top
    ynnpack_isa.cap(args.ynnpack_isa)
  harness.setup_torch_comparison(args)
  from cnnrnn.accel import native  # pylint: disable=g-import-not-at-top
  ok, why = native.available()
  if not ok:
    raise SystemExit(f"the native kernels are unavailable: {why}")
  names = args.shapes.split(",") if args.shapes else None
  for name, (a_shape, b_shape, ta, tb) in (TINY if args.tiny else SHAPES).items():
    if names and not any(n in name for n in names):
      continue
    times = harness.interleave(competitors(a_shape, b_shape, ta, tb), rounds=args.rounds,
                               steps=args.steps, warmup=2)
    form = f"{a_shape}{'^T' if ta else ''} {b_shape}{'^T' if tb else ''}"
    print(harness.table(times, "torch", f"{name}: {form}"), flush=True)
    print()


if __name__ == "__main__":
  main()
