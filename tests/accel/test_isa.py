"""Every build of the native kernels equals XLA's operations, on every machine that can run it.

The kernels are compiled once per instruction set (`native.ISAS`). This process loads the
widest build the CPU has (the other tests of tests/accel check it); here every narrower
build that the CPU can run is checked too, in a subprocess capped with
`CNNRNN_NATIVE_MAX_ISA`, so that the AVX2 build is tested on AVX-512 machines as well. Every
build compiles on any x86-64 machine with a compiler, whatever its CPU (checked by
compiling each without running it).
"""

import os
import shutil
import subprocess
import sys

import jax
import pytest

from cnnrnn.accel import native

# Each kernel against XLA's operations, to float32 rounding: conv forward (stride 1 and 2,
# a masked tail of output channels, more channels than one register block, the <= 8-channel
# pixel path), its input and weight gradients (the pixel path's too), BatchNorm's channel
# sums and moments, the LSTM forward and backward loops (a hidden size that is not a
# multiple of the lanes) and the matrix products in all four forms (a tail of columns,
# batched).
_CHECKS = r"""
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from cnnrnn import nn as cnn
from cnnrnn.accel import batch_norm, conv, native, products

assert native.available()[0], native.available()
print("isa", native.loaded_isa())
rng = np.random.default_rng(0)
normal = lambda *s: jnp.asarray(rng.standard_normal(s, np.float32))

def rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))

def grads(f, *args):
  return jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), tuple(range(len(args)))))(*args)

for b, h, w, cin, cout, k, pad, stride in [
    (2, 8, 8, 16, 16, 3, 1, 1), (3, 7, 9, 5, 20, 3, 1, 1), (2, 10, 10, 8, 72, 3, 1, 1),
    (2, 9, 9, 16, 32, 3, 1, 2), (2, 12, 12, 1, 6, 5, 2, 1), (2, 40, 37, 2, 3, 7, 3, 1),
    (2, 12, 12, 16, 8, 3, 1, 1), (3, 11, 11, 4, 8, 3, 1, 2)]:
  x, kern = normal(b, h, w, cin), normal(k, k, cin, cout)
  mine = lambda x, kern: conv.conv2d(x, kern, (pad, pad), (stride, stride))
  ref = lambda x, kern: lax.conv_general_dilated(x, kern, (stride, stride), [(pad, pad)] * 2,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  text = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(mine(x, k))), (0, 1))).lower(
      x, kern).as_text()
  assert "cnnrnn_conv2d_fwd" in text and "cnnrnn_conv2d_dw" in text
  assert rel(jax.jit(mine)(x, kern), ref(x, kern)) < 1e-5, (cin, cout, k, stride)
  for got, want in zip(grads(mine, x, kern), grads(ref, x, kern)):
    assert rel(got, want) < 1e-5, (cin, cout, k, stride)
print("ok conv")

for shape in [(8, 6, 6, 16), (4, 5, 5, 20), (300, 3)]:
  x = normal(*shape) * 2 + 3.0
  scale, bias = normal(shape[-1]), normal(shape[-1])
  mine = lambda x, s, b: batch_norm.batch_norm_train(x, s, b, 1e-5)[0]
  def ref(x, s, b):
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    return (x - mean) * lax.rsqrt(var + 1e-5) * s + b
  assert "cnnrnn_channel_sums" in jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(mine(*a))))).lower(
      x, scale, bias).as_text()
  assert rel(jax.jit(mine)(x, scale, bias), ref(x, scale, bias)) < 2e-5
  for got, want in zip(grads(mine, x, scale, bias), grads(ref, x, scale, bias)):
    assert rel(got, want) < 2e-5
print("ok channel_sums")

from cnnrnn import accel
for hidden, batch in [(20, 3), (32, 8), (7, 1)]:
  rnn = cnn.RNN(cnn.LSTMCell(hidden), return_carry=True)
  x = normal(batch, 6, 5)
  params = rnn.init(jax.random.key(0), x)["params"]
  def loss(p, x):
    carry, ys = rnn.apply({"params": p}, x)
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))
  f = jax.value_and_grad(loss, (0, 1))
  on = jax.jit(accel.accelerate(f, "cpu_native"))
  text = on.lower(params, x).compile().as_text()
  assert "cnnrnn_lstm_fwd" in text and "cnnrnn_lstm_bwd" in text
  for got, want in zip(jax.tree.leaves(on(params, x)), jax.tree.leaves(jax.jit(f)(params, x))):
    assert float(jnp.linalg.norm(got - want)) <= 2e-5 * float(jnp.linalg.norm(want)), hidden
print("ok lstm")

for batch, n, k, m in [((), 700, 37, 100), ((), 300, 40, 384), ((), 300, 40, 192),
                       ((), 700, 768, 48), ((2,), 197, 61, 64), ((3, 2), 65, 65, 32),
                       ((4,), 32, 65, 65), ((1,), 5, 7, 3)]:
  for ta, tb in [(True, False), (False, False), (False, True), (True, True)]:
    a = normal(*batch, n, k) if ta else normal(*batch, k, n)
    b = normal(*batch, m, n) if tb else normal(*batch, n, m)
    out = jax.ShapeDtypeStruct((*batch, k, m), jnp.float32)
    fn = jax.jit(lambda a, b: native.ffi_call("cnnrnn_matmul", out, a, b, transpose_a=ta,
                                              transpose_b=tb))
    want = jnp.matmul(jnp.swapaxes(a, -1, -2) if ta else a, jnp.swapaxes(b, -1, -2) if tb else b,
                      precision="highest")
    assert rel(fn(a, b), want) < 1e-5, (batch, n, k, m, ta, tb)
  a, b = normal(*batch, n, k), normal(*batch, n, m)
  fn = jax.jit(lambda a, b: products.matmul(a, b, transpose_a=True))
  assert "cnnrnn_matmul" in fn.lower(a, b).as_text()
print("ok matmul")
"""

_NAMES = ("conv", "channel_sums", "lstm", "matmul")


def _runs_here(isa, monkeypatch):
  with monkeypatch.context() as m:
    m.setenv("CNNRNN_NATIVE_MAX_ISA", isa)
    return native.cpu_isa() == isa


@pytest.mark.parametrize("isa", list(native.ISAS))
@pytest.mark.slow
def test_each_build_equals_xla_where_the_cpu_runs_it(isa, monkeypatch):
  if not _runs_here(isa, monkeypatch):
    pytest.skip(f"this CPU cannot run the {isa} build")
  if isa == native.cpu_isa() and native.available()[0]:
    assert native.loaded_isa() == isa  # This process runs it: the other tests check it too.
  # One device (no fake devices from conftest), capped at this build.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", CNNRNN_NATIVE_MAX_ISA=isa)
  out = subprocess.run([sys.executable, "-c", _CHECKS], env=env, capture_output=True, text=True,
                       timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"isa {isa}" in out.stdout
  for name in _NAMES:
    assert f"ok {name}" in out.stdout


@pytest.mark.parametrize("flags,cap,want", [
    ("sse4_2 avx avx2 fma avx512f avx512bw", None, "avx512"),
    ("sse4_2 avx avx2 fma avx512f avx512bw", "avx2", "avx2"),  # how the AVX2 build is tested
    ("sse4_2 avx avx2 fma avx512f", "none", None),
    ("sse4_2 avx avx2 fma", None, "avx2"),
    ("sse4_2 avx avx2 fma", "avx512", "avx2"),  # a cap, not a demand
    ("sse4_2 avx avx2", None, None),  # AVX2 without FMA
    ("sse4_2 avx", None, None),
])
def test_the_instruction_set_follows_the_cpu_and_the_cap(flags, cap, want, monkeypatch):
  monkeypatch.setattr(native, "_cpu_flags", lambda: flags)
  monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
  if cap is None:
    monkeypatch.delenv("CNNRNN_NATIVE_MAX_ISA", raising=False)
  else:
    monkeypatch.setenv("CNNRNN_NATIVE_MAX_ISA", cap)
  assert native.cpu_isa() == want


@pytest.mark.parametrize("isa", list(native.ISAS))
@pytest.mark.slow
def test_every_build_compiles_on_any_cpu(isa):
  # Syntax and types only (the register blocking and vector types of that width): a full
  # build takes half a minute.
  cxx = native._compiler()
  if cxx is None or shutil.which(cxx) is None:
    pytest.skip("no C++ compiler")
  sources = [str(p) for p in native._SOURCES if p.suffix == ".cc"]
  cmd = [cxx, "-fsyntax-only", *native.ISA_FLAGS[isa], "-std=c++17", "-isystem",
         jax.ffi.include_dir(), *sources]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
