"""2-D convolutions as primitives that run on the native kernels: `conv_general_dilated`.

Two bilinear primitives, each defined by XLA's convolution (primitives.py):

- `conv_p(x, w)`: x [B, H, W, C] (NHWC), w [KH, KW, C, O] (HWIO), symmetric padding, unit
  dilation, one feature group; native kernel `cnnrnn_conv2d_fwd` at any stride.
- `conv_weight_grad_p(x, dy)`: the weight gradient, sum over the batch and positions of x
  patches times dy, [KH, KW, C, O]; native kernel `cnnrnn_conv2d_dw`.

Their rules close under differentiation, so `grad`, `jvp`, Hessians and higher orders all
stay on these primitives: both are bilinear (`ad.defbilinear`: the tangent of conv(x, w) is
conv(dx, w) + conv(x, dw)); the transpose of conv in x is, at stride 1, conv_p of the
cotangent with the kernel flipped in space and transposed in channels, padded by k - 1 - p
(at larger strides XLA's transposed convolution, which dilates the cotangent); in w it is
conv_weight_grad_p; and conv_weight_grad_p transposes back to those two. Under `vmap` a
batched x with a shared kernel folds into the batch axis; anything else runs the vmapped
XLA reference.
"""

from collections.abc import Sequence
import functools

import jax
from jax import lax
from jax.interpreters import ad
from jax.interpreters import batching
import jax.numpy as jnp

from cnnrnn.accel import native
from cnnrnn.accel import primitives

# The kernels take the output channels zero-padded to a multiple of their vector's lanes: 16
# is one for every build (16 lanes with AVX-512, 8 with AVX2).
_LANES = 16
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _pads(padding):
  (ph, pw) = padding
  return ((ph, ph), (pw, pw))


def reference_conv(x, w, *, padding: tuple[int, int], strides: tuple[int, int]):
  """`conv_p` in XLA's operations."""
  return lax.conv_general_dilated(x, w, strides, _pads(padding), dimension_numbers=_NHWC)


def reference_weight_grad(x, dy, *, kernel_hw: tuple[int, int], padding: tuple[int, int],
                          strides: tuple[int, int]):
  """`conv_weight_grad_p` in XLA's operations: the transpose of w -> conv(x, w) at dy."""
  w = jax.ShapeDtypeStruct((*kernel_hw, x.shape[3], dy.shape[3]), dy.dtype)
  (dw,) = jax.linear_transpose(
      lambda w: reference_conv(x, w, padding=padding, strides=strides), w)(dy)
  return dw


def _kernel_conv(x, w, *, padding, strides):
  (kh, kw), (ph, pw), (sh, sw) = w.shape[:2], padding, strides
  b, h, wd, _ = x.shape
  out = jax.ShapeDtypeStruct(
      (b, (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1, w.shape[3]), jnp.float32)
  extra = -w.shape[3] % _LANES
  w = jnp.pad(w, ((0, 0), (0, 0), (0, 0), (0, extra))) if extra else w
  return native.ffi_call("cnnrnn_conv2d_fwd", out, x, w, pad_h=ph, pad_w=pw, stride_h=sh,
                         stride_w=sw)


def _kernel_weight_grad(x, dy, *, kernel_hw, padding, strides):
  (kh, kw), (ph, pw), (sh, sw) = kernel_hw, padding, strides
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[3], dy.shape[3]), jnp.float32)
  return native.ffi_call("cnnrnn_conv2d_dw", out, x, dy, pad_h=ph, pad_w=pw, stride_h=sh,
                         stride_w=sw)


conv_p = primitives.define("cnnrnn_conv", reference_conv, _kernel_conv)
conv_weight_grad_p = primitives.define("cnnrnn_conv_weight_grad", reference_weight_grad,
                                       _kernel_weight_grad)


def _input_transpose(dy, x_shape, w, *, padding, strides):
  """The transpose of x -> conv(x, w) at dy: [B, H, W, C] of shape x_shape."""
  (kh, kw), (ph, pw) = w.shape[:2], padding
  if tuple(strides) == (1, 1):
    # A stride-1 convolution of dy with the kernel flipped in space and transposed in
    # channels, padded by k - 1 - p (>= 0: the padding is below the kernel size).
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    return conv_p.bind(dy, w_t, padding=(kh - 1 - ph, kw - 1 - pw), strides=(1, 1))
  # A strided convolution's input gradient dilates dy: XLA's.
  x = jax.ShapeDtypeStruct(x_shape, dy.dtype)
  (dx,) = jax.linear_transpose(
      lambda x: reference_conv(x, w, padding=padding, strides=strides), x)(dy)
  return dx


def _conv_transpose_x(ct, x, w, *, padding, strides):
  return _input_transpose(ct, x.aval.shape, w, padding=padding, strides=strides)


def _conv_transpose_w(ct, x, w, *, padding, strides):
  return conv_weight_grad_p.bind(x, ct, kernel_hw=tuple(w.aval.shape[:2]), padding=padding,
                                 strides=strides)


def _weight_grad_transpose_x(ct, x, dy, *, kernel_hw, padding, strides):
  # <wgrad(x, dy), W> = <conv(x, W), dy>: in x, the input transpose of conv(., W) at dy.
  return _input_transpose(dy, x.aval.shape, ct, padding=padding, strides=strides)


def _weight_grad_transpose_dy(ct, x, dy, *, kernel_hw, padding, strides):
  del dy, kernel_hw
  return conv_p.bind(x, ct, padding=padding, strides=strides)


ad.defbilinear(conv_p, _conv_transpose_x, _conv_transpose_w)
ad.defbilinear(conv_weight_grad_p, _weight_grad_transpose_x, _weight_grad_transpose_dy)


def _conv_batch(args, dims, *, padding, strides):
  x, w = args
  bx, bw = dims
  if bw is not None:  # A kernel per example: XLA's convolution, vmapped.
    return jax.vmap(functools.partial(reference_conv, padding=padding, strides=strides),
                    in_axes=dims)(x, w), 0
  x = jnp.moveaxis(x, bx, 0)
  n, b = x.shape[:2]
  y = conv_p.bind(x.reshape(n * b, *x.shape[2:]), w, padding=padding, strides=strides)
  return y.reshape(n, b, *y.shape[1:]), 0


batching.primitive_batchers[conv_p] = _conv_batch
primitives.batch_by_vmap(conv_weight_grad_p, reference_weight_grad)


def conv2d(x: jax.Array, w: jax.Array, padding: tuple[int, int],
           strides: tuple[int, int] = (1, 1)) -> jax.Array:
  """2-D convolution through `conv_p` (the native kernel where the program allows it).

  Args:
    x: [B, H, W, C].
    w: [KH, KW, C, O].
    padding: (ph, pw) zeros added on both sides of the height and width axes, each below
      the kernel size.
    strides: (sh, sw).

  Returns:
    [B, (H + 2 ph - KH) // sh + 1, (W + 2 pw - KW) // sw + 1, O], as
    `lax.conv_general_dilated(x, w, strides, ((ph, ph), (pw, pw)), dimension_numbers=("NHWC",
    "HWIO", "NHWC"))`.
  """
  return conv_p.bind(x, w, padding=tuple(int(p) for p in padding),
                     strides=tuple(int(s) for s in strides))


def _symmetric_padding(lhs, rhs, window_strides, padding) -> tuple[int, int] | None:
  """(ph, pw) if `padding` is symmetric, below the kernel size and leaves a non-empty output."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  (top, bottom), (left, right) = padding
  kh, kw = rhs.shape[:2]
  # The stride-1 input transpose pads by k - 1 - p, which must not be negative.
  if top != bottom or left != right or not (0 <= top < kh and 0 <= left < kw):
    return None
  if lhs.shape[1] + 2 * top < kh or lhs.shape[2] + 2 * left < kw:
    return None
  return int(top), int(left)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated`, through `conv_p` where the native kernels compute it.

  That is: float32 2-D convolutions with NHWC inputs and HWIO kernels (Flax's layouts),
  unit dilations, one feature group and symmetric padding below the kernel size, on
  operands without explicit sharding in their types. Anything
  else is passed to `lax.conv_general_dilated` unchanged. The decision reads only shapes,
  dtypes and arguments; whether the kernel or XLA's convolution runs is decided when the
  program is lowered (`primitives.kernel_may_run`). This is the `conv_general_dilated` hook
  that `cnnrnn.accel` gives `flax.linen.Conv`.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
              batch_group_count=batch_group_count, precision=precision,
              preferred_element_type=preferred_element_type)
  pad = None
  if (lhs.ndim == 4 and rhs.ndim == 4 and min(window_strides) >= 1
      and set(lhs_dilation or (1,)) == {1} and set(rhs_dilation or (1,)) == {1}
      and feature_group_count == 1 and batch_group_count == 1
      and preferred_element_type in (None, jnp.float32)
      and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
      and not primitives.explicitly_sharded(lhs, rhs)
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC):
    pad = _symmetric_padding(lhs, rhs, window_strides, padding)
  if pad is None:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
  return conv2d(lhs, rhs, pad, tuple(window_strides))
