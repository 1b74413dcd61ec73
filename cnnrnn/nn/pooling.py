"""Pooling layers that are fast on every backend.

`flax.linen.max_pool` lowers to `reduce_window`, whose backward pass on XLA:CPU is a
gather/scatter over index arrays (about 40% of a LeNet-5 step on a 2-core CPU). When the
windows do not overlap (window == stride, no padding) the same result is a reshape
followed by a reduction, whose gradient is a cheap elementwise mask. Values are identical;
gradients differ only at exact ties inside a window (split equally here, given to one
element by `reduce_window`), e.g. all-zero windows after a ReLU, whose incoming gradient
is zero anyway.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _tile(x: jnp.ndarray, window: Sequence[int]):
  """[B, H, W, C] -> [B, H/wh, wh, W/ww, ww, C], cropping a remainder like VALID pooling."""
  b, h, w, c = x.shape
  wh, ww = window
  oh, ow = h // wh, w // ww
  x = x[:, : oh * wh, : ow * ww, :]
  return x.reshape(b, oh, wh, ow, ww, c)


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID"):
  """Max pooling over NHWC inputs; equal to `flax.linen.max_pool`.

  Args:
    x: [B, H, W, C] inputs.
    window_shape: (wh, ww).
    strides: (sh, sw); defaults to `window_shape`.
    padding: "VALID", "SAME" or explicit pairs, as in `flax.linen.max_pool`.

  Returns:
    [B, H', W', C] pooled outputs.
  """
  window_shape = tuple(window_shape)
  strides = window_shape if strides is None else tuple(strides)
  if strides == window_shape and padding == "VALID" and x.ndim == 4:
    return _tile(x, window_shape).max(axis=(2, 4))
  return nn.max_pool(x, window_shape, strides=strides, padding=padding)


def avg_pool(x, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID"):
  """Average pooling over NHWC inputs; equal to `flax.linen.avg_pool` (padding counted)."""
  window_shape = tuple(window_shape)
  strides = window_shape if strides is None else tuple(strides)
  if strides == window_shape and padding == "VALID" and x.ndim == 4:
    return _tile(x, window_shape).mean(axis=(2, 4))
  return nn.avg_pool(x, window_shape, strides=strides, padding=padding)


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
  """torchvision's bins: [floor(i * size / out), ceil((i + 1) * size / out)) for i < out."""
  return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive_matrix(size: int, out: int, dtype) -> jnp.ndarray:
  """[out, size] matrix whose row i averages bin i."""
  m = np.zeros((out, size), np.float32)
  for i, (start, end) in enumerate(_adaptive_bins(size, out)):
    m[i, start:end] = 1.0 / (end - start)
  return jnp.asarray(m, dtype)


def adaptive_avg_pool(x, output_size: int | Sequence[int]):
  """Adaptive average pooling over NHWC inputs, with the bins of `torch.nn.AdaptiveAvgPool2d`.

  Output cell i along an axis of length n averages inputs
  [floor(i * n / out), ceil((i + 1) * n / out)), so any input size works: bins overlap when
  n is not a multiple of out, and inputs repeat when n < out. When n is a multiple of out
  this is plain non-overlapping average pooling (identity when n == out).

  Args:
    x: [B, H, W, C] inputs.
    output_size: out or (out_h, out_w).

  Returns:
    [B, out_h, out_w, C] pooled outputs.
  """
  if x.ndim != 4:
    raise ValueError(f"adaptive_avg_pool expects [B, H, W, C] inputs, got shape {x.shape}")
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  h, w = x.shape[1], x.shape[2]
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:
    return avg_pool(x, (h // oh, w // ow))
  # Uneven bins: averaging matrices along H then W (exact sums, float32-rounded weights).
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("bhwc,oh->bowc", x, _adaptive_matrix(h, oh, x.dtype), precision=hi)
  return jnp.einsum("bowc,pw->bopc", x, _adaptive_matrix(w, ow, x.dtype), precision=hi)


class MaxPool(nn.Module):
  """`max_pool` as a parameter-free module, so tools that intercept modules see the layer.

  Attributes:
    window_shape: (wh, ww).
    strides: (sh, sw); defaults to `window_shape`.
    padding: "VALID", "SAME" or explicit ((lo, hi), (lo, hi)) pairs.
  """

  window_shape: Sequence[int]
  strides: Sequence[int] | None = None
  padding: str | Sequence[tuple[int, int]] = "VALID"

  def __call__(self, x):
    """Args: x: [B, H, W, C]. Returns: [B, H', W', C]."""
    return max_pool(x, self.window_shape, self.strides, self.padding)


class AvgPool(nn.Module):
  """`avg_pool` as a parameter-free module (see `MaxPool`)."""

  window_shape: Sequence[int]
  strides: Sequence[int] | None = None
  padding: str | Sequence[tuple[int, int]] = "VALID"

  def __call__(self, x):
    """Args: x: [B, H, W, C]. Returns: [B, H', W', C]."""
    return avg_pool(x, self.window_shape, self.strides, self.padding)


class AdaptiveAvgPool(nn.Module):
  """`adaptive_avg_pool` as a parameter-free module (see `MaxPool`).

  Attributes:
    output_size: out or (out_h, out_w).
  """

  output_size: int | Sequence[int]

  def __call__(self, x):
    """Args: x: [B, H, W, C]. Returns: [B, out_h, out_w, C]."""
    return adaptive_avg_pool(x, self.output_size)
