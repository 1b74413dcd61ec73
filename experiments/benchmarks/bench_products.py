"""The a^T b products of the ViT steps alone: cnnrnn's native kernel, XLA, PyTorch (MKL).

Each product c = a^T b (a [..., N, K], b [..., N, M]) three ways: `native`, the
`cnnrnn_matmul_tn` kernel as `cnnrnn.accel` calls it; `xla`, `lax.dot_general` jitted
(YNNPACK after a transposing copy of a, or Eigen); `torch`, `torch.matmul(a.mT, b)` (MKL,
reading a transposed in place). One call each in turn, `--rounds` times
(experiments/benchmarks/harness.py); medians and minima. The shapes are the weight gradients
and the attention's dK, dV of the two ViT steps of `bench_vit.py`. Not a test.

    python experiments/benchmarks/bench_products.py [--rounds=40] [--torch_threads=1]
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

SHAPES = {  # name -> (a's shape, b's shape)
    "ViT-Ti q/k/v": ((3152, 192), (3152, 576)),
    "ViT-Ti fc1": ((3152, 192), (3152, 768)),
    "ViT-Ti fc2": ((3152, 768), (3152, 192)),
    "ViT-Ti dK, dV": ((48, 197, 197), (48, 197, 64)),
    "patch-4 q/k/v": ((8320, 128), (8320, 384)),
    "patch-4 fc2": ((8320, 256), (8320, 128)),
    "patch-4 dK, dV": ((512, 65, 65), (512, 65, 32)),
}
TINY = {"tiny": ((40, 24), (40, 16))}


def competitors(a_shape, b_shape, seed=0):
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
  out = jax.ShapeDtypeStruct((*a_shape[:-2], a_shape[-1], b_shape[-1]), jnp.float32)
  kernel = jax.jit(lambda x, y: native.ffi_call("cnnrnn_matmul_tn", out, x, y))
  xla = jax.jit(lambda x, y: products.reference_matmul(x, y, transpose_a=True,
                                                       transpose_b=False))
  want = np.einsum("...nk,...nm->...km", a.astype(np.float64), b)
  scale = np.abs(want).max()
  for name, got in (("native", kernel(ja, jb)), ("xla", xla(ja, jb)),
                    ("torch", torch.matmul(ta.mT, tb).numpy())):
    err = np.abs(np.asarray(got) - want).max() / scale
    if err > 1e-5:
      raise AssertionError(f"{name}: relative error {err:.1e} on {a_shape}^T {b_shape}")
  return {"native": lambda: kernel(ja, jb).block_until_ready(),
          "xla": lambda: xla(ja, jb).block_until_ready(),
          "torch": lambda: torch.matmul(ta.mT, tb)}


def main():
  parser = harness.torch_comparison_parser(__doc__)
  parser.set_defaults(rounds=40, steps=1)
  parser.add_argument("--ynnpack_isa", choices=("avx2",), default=None,
                      help="cap YNNPACK (XLA's matmul library) at this ISA (ynnpack_isa.py)")
  args = parser.parse_args()
  if args.ynnpack_isa:
    import ynnpack_isa  # pylint: disable=g-import-not-at-top
    ynnpack_isa.cap(args.ynnpack_isa)
  harness.setup_torch_comparison(args)
  from cnnrnn.accel import native  # pylint: disable=g-import-not-at-top
  ok, why = native.available()
  if not ok:
    raise SystemExit(f"the native kernels are unavailable: {why}")
  for name, (a_shape, b_shape) in (TINY if args.tiny else SHAPES).items():
    times = harness.interleave(competitors(a_shape, b_shape), rounds=args.rounds,
                               steps=args.steps, warmup=2)
    print(harness.table(times, "torch", f"{name}: {a_shape}^T {b_shape}"), flush=True)
    print()


if __name__ == "__main__":
  main()
