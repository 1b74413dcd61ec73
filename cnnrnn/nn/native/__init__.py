"""Native CPU kernels called through the XLA FFI: convolutions and BatchNorm (`kernels.cc`),
the LSTM's time loops (`recurrent.cc`) and the embedding gradient (`embedding.cc`).

XLA:CPU runs the small-channel convolutions of LeNet and the CIFAR ResNets at a fraction of
the machine's speed, and lowers their weight gradients to layout transposes plus a
convolution over the batch (experiments/benchmarks/README.md). `conv_general_dilated` is a
drop-in replacement for `lax.conv_general_dilated` (Flax's `nn.Conv(...,
conv_general_dilated=...)` hook) that sends NHWC/HWIO float32 convolutions on a single CPU
device to direct AVX-512 kernels (forward, weight gradient, and input gradient at stride 1),
and everything else to XLA unchanged. `batch_norm_train` computes BatchNorm's batch
statistics and their gradients in one pass each (XLA:CPU materialises x**2 and reduces
through reduce-window fusions, ~90 ms of a ResNet-20 step). `lstm` runs an LSTM's whole
forward loop in one call and its whole backward loop in another, each step a register-tiled
matmul with the gate arithmetic fused in, instead of a `lax.scan` of a small dot and
several small fusions; `cnnrnn.nn.RNN` uses it for `LSTMCell` where it applies.
`take_rows` is an embedding lookup whose table gradient is one call that runs once the
cotangent exists (XLA zero-fills its scatter's buffer at the start of the step, in the
way of the forward pass); `RNN(ids, embedding=table)` reads its table with it. Parameters
and results are the same; sums are ordered differently (BatchNorm's in float32 blocks, then
float64), so results equal XLA's to float32 rounding.

The kernels are compiled on first use with the system's C++ compiler (`$CXX`, else `g++`)
against jaxlib's FFI headers, for this machine's CPU (`-march=native`), and cached under
`$CNNRNN_CACHE_DIR` (default `~/.cache/cnnrnn`). Where that is impossible (no compiler, no
AVX-512, not Linux/x86-64), or with `CNNRNN_NATIVE=0`, everything goes to XLA and
`available()` says why not.
"""

from collections.abc import Iterator, Sequence
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
from pathlib import Path
import platform
import shutil
import subprocess
import tempfile

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_SOURCES = tuple(Path(__file__).with_name(name)
                 for name in ("kernels.cc", "recurrent.cc", "embedding.cc", "common.h"))
# FFI target name -> handler symbol in the library.
_TARGETS = {
    "cnnrnn_conv2d_fwd": "CnnrnnConv2dForward",
    "cnnrnn_conv2d_dw": "CnnrnnConv2dWeightGrad",
    "cnnrnn_channel_sums": "CnnrnnChannelSums",
    "cnnrnn_lstm_fwd": "CnnrnnLstmForward",
    "cnnrnn_lstm_bwd": "CnnrnnLstmBackward",
    "cnnrnn_rows_grad": "CnnrnnRowsGrad",
}
_LANES = 16  # float32 lanes of an AVX-512 vector; kernels take output channels padded to this.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))

log = logging.getLogger(__name__)


def _cpu_flags() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return ""


def _compile(cxx: str, out: Path) -> None:
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_out = Path(tmp) / out.name
    cmd = [cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-isystem",
           jax.ffi.include_dir(), *(str(p) for p in _SOURCES if p.suffix == ".cc"), "-o",
           str(tmp_out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    os.replace(tmp_out, out)  # Atomic: concurrent processes may compile at the same time.


@functools.cache
def _load() -> tuple[bool, str]:
  """Compiles (once per machine and source), loads and registers the kernels."""
  if os.environ.get("CNNRNN_NATIVE", "1") == "0":
    return False, "disabled by CNNRNN_NATIVE=0"
  if platform.system() != "Linux" or platform.machine() != "x86_64":
    return False, f"needs Linux on x86-64, not {platform.system()} on {platform.machine()}"
  flags = _cpu_flags()
  if "avx512f" not in flags.split():
    return False, "the CPU has no AVX-512"
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    return False, "no C++ compiler (set $CXX or install g++)"
  key = hashlib.sha256(b"\0".join(
      [*(p.read_bytes() for p in _SOURCES), jax.__version__.encode(), cxx.encode(),
       flags.encode()])).hexdigest()[:16]
  cache = Path(os.environ.get("CNNRNN_CACHE_DIR", Path.home() / ".cache" / "cnnrnn"))
  library = cache / "native" / f"kernels-{key}.so"
  try:
    if not library.exists():
      log.info("Compiling the native kernels into %s", library)
      _compile(cxx, library)
    lib = ctypes.cdll.LoadLibrary(str(library))
    for target, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (OSError, RuntimeError, AttributeError) as e:
    log.warning("Native kernels unavailable, using XLA's: %s", e)
    return False, str(e)
  return True, ""


def available() -> tuple[bool, str]:
  """(True, "") if the native kernels are loaded, else (False, the reason)."""
  return _load()


_forced: bool | None = None


@contextlib.contextmanager
def override(use: bool | None) -> Iterator[None]:
  """Within the block, trace with the native kernels wherever they can run (True), never
  (False), or where `applies` decides by default (None).

  True lifts the single-device condition: for programs that are not sharded, on a process
  that has several devices (tests with fake CPU devices, for instance). The choice is made
  when a function is traced: a jitted function keeps what its first trace chose.
  """
  global _forced
  previous, _forced = _forced, use
  try:
    yield
  finally:
    _forced = previous


def applies(*arrays: jax.Array) -> bool:
  """Whether the native kernels take these arrays in the computation being traced.

  They need float32 arrays, the CPU backend and, unless `override(True)`, a single device
  (`jax.device_count() == 1`): a custom call is opaque to the SPMD partitioner, which would
  replicate its operands, so programs that may be sharded keep XLA's operations.
  """
  if _forced is False or not all(a.dtype == jnp.float32 for a in arrays):
    return False
  return (jax.default_backend() == "cpu" and (_forced or jax.device_count() == 1)
          and available()[0])


def _ffi_call(target: str, out, *args, **attrs):
  """Calls an FFI target with result shape(s) `out`; int attributes as int64, bools as bool."""
  ok, why = available()
  if not ok:
    raise RuntimeError(f"cnnrnn's native kernels are unavailable: {why}")
  attrs = {k: np.bool_(v) if isinstance(v, bool) else np.int64(v) for k, v in attrs.items()}
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)


def _pad_channels(w):
  extra = -w.shape[3] % _LANES
  return jnp.pad(w, ((0, 0), (0, 0), (0, 0), (0, extra))) if extra else w


def _forward(x, w, pad, strides=(1, 1)):
  """Convolution of x [B, H, W, C] (NHWC) with w [KH, KW, C, O] (HWIO), symmetric padding."""
  (kh, kw), (ph, pw), (sh, sw) = w.shape[:2], pad, strides
  b, h, wd, _ = x.shape
  out = jax.ShapeDtypeStruct(
      (b, (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1, w.shape[3]), jnp.float32)
  return _ffi_call("cnnrnn_conv2d_fwd", out, x, _pad_channels(w), pad_h=ph, pad_w=pw, stride_h=sh,
                   stride_w=sw)


def _weight_grad(x, dy, kernel_hw, pad, strides):
  (kh, kw), (ph, pw), (sh, sw) = kernel_hw, pad, strides
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[3], dy.shape[3]), jnp.float32)
  return _ffi_call("cnnrnn_conv2d_dw", out, x, dy, pad_h=ph, pad_w=pw, stride_h=sh, stride_w=sw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, pad: tuple[int, int],
           strides: tuple[int, int] = (1, 1)) -> jax.Array:
  """2-D convolution on the native kernels (raises RuntimeError if they are unavailable).

  Args:
    x: [B, H, W, C] float32.
    w: [KH, KW, C, O] float32.
    pad: (ph, pw) zeros added on both sides of the height and width axes.
    strides: (sh, sw).

  Returns:
    [B, (H + 2 ph - KH) // sh + 1, (W + 2 pw - KW) // sw + 1, O], as
    `lax.conv_general_dilated(x, w, strides, ((ph, ph), (pw, pw)), dimension_numbers=("NHWC",
    "HWIO", "NHWC"))`.
  """
  return _forward(x, w, pad, strides)


def _conv2d_fwd(x, w, pad, strides):
  return _forward(x, w, pad, strides), (x, w)


def _conv2d_bwd(pad, strides, residuals, dy):
  x, w = residuals
  (kh, kw), (ph, pw) = w.shape[:2], pad
  if strides == (1, 1):
    # The input gradient is a stride-1 convolution of dy with the kernel flipped in space
    # and transposed in channels, padded by k - 1 - p.
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dx = _forward(dy, w_t, (kh - 1 - ph, kw - 1 - pw))
  else:  # A strided convolution's input gradient dilates dy: XLA's.
    _, vjp = jax.vjp(lambda x: lax.conv_general_dilated(
        x, w, strides, ((ph, ph), (pw, pw)), dimension_numbers=_NHWC), x)
    (dx,) = vjp(dy)
  return dx, _weight_grad(x, dy, (kh, kw), pad, strides)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _native_padding(lhs, rhs, window_strides, padding) -> tuple[int, int] | None:
  """(ph, pw) if `padding` is symmetric, at most k - 1 and leaves a non-empty output."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  (top, bottom), (left, right) = padding
  kh, kw = rhs.shape[:2]
  # The stride-1 input gradient pads by k - 1 - p, which must not be negative.
  if top != bottom or left != right or not (0 <= top < kh and 0 <= left < kw):
    return None
  if lhs.shape[1] + 2 * top < kh or lhs.shape[2] + 2 * left < kw:
    return None
  return int(top), int(left)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated`, on the native kernels where they apply (see module doc).

  They apply to 2-D convolutions with NHWC inputs and HWIO kernels (Flax's layouts), unit
  dilations, one feature group and symmetric padding below the kernel size, where `applies`
  (float32, CPU, one device). The input gradient of a strided convolution stays XLA's.
  Everything else is passed to `lax.conv_general_dilated` unchanged.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
              batch_group_count=batch_group_count, precision=precision,
              preferred_element_type=preferred_element_type)
  pad = None
  if (lhs.ndim == 4 and rhs.ndim == 4 and min(window_strides) >= 1
      and set(lhs_dilation or (1,)) == {1} and set(rhs_dilation or (1,)) == {1}
      and feature_group_count == 1
      and batch_group_count == 1 and preferred_element_type in (None, jnp.float32)
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
      and applies(lhs, rhs)):
    pad = _native_padding(lhs, rhs, window_strides, padding)
  if pad is None:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
  return conv2d(lhs, rhs, pad, tuple(int(s) for s in window_strides))


def _channel_sums(u, v, shift, *, moments: bool):
  out = jax.ShapeDtypeStruct((2, u.shape[1]), jnp.float32)
  return _ffi_call("cnnrnn_channel_sums", out, u, v, shift, moments=moments)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """BatchNorm with batch statistics over all axes but the last, on the native kernels.

  Args:
    x: [..., C] float32.
    scale, bias: [C] float32.
    epsilon: added to the variance.

  Returns:
    (y, mean, var): y = (x - mean) * rsqrt(var + epsilon) * scale + bias, with the batch
    mean and biased variance ([C] each), as `flax.linen.BatchNorm` in training mode.
  """
  return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _per_channel(x, *vectors):
  """Each [C] vector reshaped to broadcast against x [..., C] (explicit rank promotion)."""
  return [v.reshape((1,) * (x.ndim - 1) + (-1,)) for v in vectors]


def _batch_norm_fwd(x, scale, bias, epsilon):
  c = x.shape[-1]
  x2 = x.reshape(-1, c)
  mean, var = _channel_sums(x2, x2, jnp.zeros((c,), jnp.float32), moments=True)
  inv = lax.rsqrt(var + epsilon)
  m, mul, b = _per_channel(x, mean, inv * scale, bias)
  return ((x - m) * mul + b, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  dy, dmean, dvar = cotangents
  c = x.shape[-1]
  n = x.size // c
  sum_dy, sum_dy_xc = _channel_sums(dy.reshape(-1, c), x.reshape(-1, c), mean, moments=False)
  dscale = sum_dy_xc * inv  # sum(dy * xhat), xhat = (x - mean) * inv
  # dx = scale * inv * (dy - mean(dy) - xhat * mean(dy * xhat)), plus the terms of the mean
  # and variance outputs (d mean / dx = 1 / n, d var / dx = 2 (x - mean) / n).
  mean_b, scale_inv, mean_dy, proj, dmean_n, dvar_n = _per_channel(
      x, mean, scale * inv, sum_dy / n, inv * dscale / n, dmean / n, 2.0 * dvar / n)
  xc = x - mean_b
  dx = scale_inv * (dy - mean_dy - xc * proj) + (dmean_n + dvar_n * xc)
  return dx, dscale, sum_dy


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def _lstm_forward(kernel, bias, c0, h0, xp, lengths, reverse, save_residuals):
  t, b, g = xp.shape
  seq = jax.ShapeDtypeStruct((t, b, g // 4), jnp.float32)
  carry = jax.ShapeDtypeStruct((b, g // 4), jnp.float32)
  out = (seq, carry, carry, seq, seq, jax.ShapeDtypeStruct((t, b, g), jnp.float32), seq)
  return _ffi_call("cnnrnn_lstm_fwd", out, xp, bias, kernel, c0, h0, lengths, reverse=reverse,
                   save_residuals=save_residuals)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def lstm(kernel: jax.Array, bias: jax.Array, c0: jax.Array, h0: jax.Array, xp: jax.Array,
         lengths: jax.Array, reverse: bool = False):
  """The LSTM time loop of `cnnrnn.nn.RNN(LSTMCell)` on the native kernels (recurrent.cc).

  Raises RuntimeError if the kernels are unavailable. Gate blocks [i, f, g, o], as LSTMCell;
  example b is updated at step t only if t < lengths[b] (else its carry is kept and its
  output is zero). Reverse-mode differentiable; the recurrent-weight gradient is one matmul
  over all steps.

  Args:
    kernel: [H, 4H] float32 recurrent kernel.
    bias: [4H] float32, added to every step's gates (the input and recurrent biases).
    c0, h0: [B, H] float32 initial carry.
    xp: [T, B, 4H] float32 input projections, time-major.
    lengths: [B] int32.
    reverse: run t = T-1 .. 0.

  Returns:
    ((c_T, h_T), ys [T, B, H]).
  """
  ys, c, h, *_ = _lstm_forward(kernel, bias, c0, h0, xp, lengths, reverse, False)
  return (c, h), ys


def _lstm_fwd(kernel, bias, c0, h0, xp, lengths, reverse):
  ys, c, h, h_in, c_in, acts, tanh_c = _lstm_forward(kernel, bias, c0, h0, xp, lengths, reverse,
                                                     True)
  return ((c, h), ys), (kernel, h_in, c_in, acts, tanh_c, lengths)


def _lstm_bwd(reverse, residuals, cotangents):
  kernel, h_in, c_in, acts, tanh_c, lengths = residuals
  (dc, dh), dys = cotangents
  t, b, g = acts.shape
  carry = jax.ShapeDtypeStruct((b, g // 4), jnp.float32)
  out = (jax.ShapeDtypeStruct((t, b, g), jnp.float32), carry, carry)
  dz, dc0, dh0 = _ffi_call("cnnrnn_lstm_bwd", out, kernel, acts, c_in, tanh_c, lengths, dys, dc,
                           dh, reverse=reverse)
  # sum_t h_in_t^T dz_t as one [H, T*B] x [T*B, 4H] matmul.
  dz2 = dz.reshape(t * b, g)
  d_kernel = lax.dot_general(h_in.reshape(t * b, -1), dz2, (((0,), (0,)), ((), ())))
  return d_kernel, dz2.sum(axis=0), dc0, dh0, dz, None


lstm.defvjp(_lstm_fwd, _lstm_bwd)


def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
  """`jnp.take(table, ids, axis=0)` (an embedding lookup) whose gradient is one native call.

  XLA differentiates the lookup into a scatter-add onto a zero-filled [V, F] buffer and
  schedules the fill at the start of the step, where it delays the forward pass
  (embedding.cc). Where `applies(table)`, the gradient is instead the native
  `cnnrnn_rows_grad`, which runs once the cotangent exists; elsewhere this is `jnp.take`.
  The value, and the handling of negative and out-of-range ids, are `jnp.take`'s; the
  gradient equals XLA's to float32 rounding (repeated ids are summed in order).

  Args:
    table: [V, F].
    ids: integer ids of any shape.

  Returns:
    [*ids.shape, F].
  """
  if applies(table):
    return _take_rows(table, ids, table.shape[0])
  return jnp.take(table, ids, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _take_rows(table, ids, num_rows):
  del num_rows  # Only the backward pass needs it.
  return jnp.take(table, ids, axis=0)


def _take_rows_fwd(table, ids, num_rows):
  return jnp.take(table, ids, axis=0), ids


def _take_rows_bwd(num_rows, ids, dy):
  f = dy.shape[-1]
  flat = ids.reshape(-1).astype(jnp.int32)
  flat = jnp.where(flat < 0, flat + num_rows, flat)  # jnp.take's negative ids count from the end.
  d_table = _ffi_call("cnnrnn_rows_grad", jax.ShapeDtypeStruct((num_rows, f), jnp.float32),
                      dy.reshape(-1, f), flat)
  return d_table, None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)
