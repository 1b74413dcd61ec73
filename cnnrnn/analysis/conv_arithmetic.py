"""Convolution arithmetic: output sizes, receptive fields, and a per-layer table of a model.

Worked example (the course's numbers), a 32x32 input and a 5x5 kernel:

    >>> [conv_output_size(32, 5, padding=p, stride=s) for p, s in ((0, 1), (2, 1), (0, 2), (2, 2))]
    [28, 32, 14, 16]
    >>> receptive_field([(5, 1)] * 3)  # three stacked 5x5 convolutions: 5, 9, 13
    13
    >>> 224 * 224 * 3 * 1000 + 1000  # a 224x224x3 image into 1000 dense units
    150529000
    >>> 5 * 5 * 3 + 1  # one 5x5 filter over 3 channels, shared over all positions
    76
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cnnrnn import nn as cnn
from cnnrnn.analysis.params import count_params


def _positive(name: str, value: int, minimum: int = 1) -> int:
  if int(value) != value or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def conv_output_size(input_size: int, kernel_size: int, padding: int = 0, stride: int = 1,
                     dilation: int = 1) -> int:
  """Output length of a convolution or pooling along one axis.

  floor((input + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1, which is
  (input - kernel + 2 * padding) / stride + 1 for dilation 1; as in PyTorch and Flax.

  Args:
    input_size: input length.
    kernel_size: kernel (window) length.
    padding: zeros added on each side.
    stride: step between windows.
    dilation: spacing between kernel taps.

  Returns:
    The output length.

  Raises:
    ValueError: non-positive sizes, or a (dilated) kernel larger than the padded input.
  """
  n = _positive("input_size", input_size)
  k = _positive("kernel_size", kernel_size)
  p = _positive("padding", padding, 0)
  s = _positive("stride", stride)
  d = _positive("dilation", dilation)
  span = d * (k - 1) + 1
  if span > n + 2 * p:
    raise ValueError(f"kernel span {span} (kernel_size={k}, dilation={d}) exceeds the padded "
                     f"input {n + 2 * p} (input_size={n}, padding={p})")
  return (n + 2 * p - span) // s + 1


def receptive_fields(layers: Sequence[Sequence[int]]) -> list[int]:
  """Receptive field of every layer of a chain, in input pixels along one axis.

  Layer l with kernel k_l and dilation d_l grows the field by d_l * (k_l - 1) times the
  product of the strides before it.

  Args:
    layers: (kernel_size, stride) or (kernel_size, stride, dilation) per layer, input first.

  Returns:
    One receptive field per layer, e.g. [5, 9, 13] for three 5x5 stride-1 layers.
  """
  fields, field, jump = [], 1, 1
  for i, layer in enumerate(layers):
    if len(layer) not in (2, 3):
      raise ValueError(f"layers[{i}]={layer!r}: expected (kernel_size, stride[, dilation])")
    k = _positive(f"layers[{i}] kernel_size", layer[0])
    s = _positive(f"layers[{i}] stride", layer[1])
    d = _positive(f"layers[{i}] dilation", layer[2]) if len(layer) == 3 else 1
    field += d * (k - 1) * jump
    jump *= s
    fields.append(field)
  return fields


def receptive_field(layers: Sequence[Sequence[int]]) -> int:
  """Receptive field of the last layer of a chain (see `receptive_fields`); 1 for no layers.

  Args:
    layers: (kernel_size, stride) or (kernel_size, stride, dilation) per layer, input first.

  Returns:
    The receptive field of the last layer, e.g. 13 for three 5x5 stride-1 layers.
  """
  fields = receptive_fields(layers)
  return fields[-1] if fields else 1


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """One row of `layer_table`.

  Attributes:
    name: module path ("stage1_block0/conv1"), or "(inferred pool)" for a downsampling done
      outside any module (see `layer_table`).
    kind: "Conv", "Dense", "BatchNorm", "MaxPool", "AvgPool", "AdaptiveAvgPool", "pool?".
    output_shape: output shape, batch first.
    params: parameters held by the module itself.
    kernel: (kh, kw) window of conv and pool layers, else None.
    stride: (sh, sw) of conv and pool layers, else None.
    receptive_field: (rh, rw) in input pixels for spatial layers; None for dense layers
      (they see the whole input) and wherever the field could not be traced.
  """

  name: str
  kind: str
  output_shape: tuple[int, ...]
  params: int
  kernel: tuple[int, int] | None
  stride: tuple[int, int] | None
  receptive_field: tuple[int, int] | None


_SPATIAL = (nn.Conv, cnn.MaxPool, cnn.AvgPool)
_RECORDED = (nn.Conv, nn.Dense, nn.BatchNorm, cnn.BatchNorm, cnn.MaxPool, cnn.AvgPool,
             cnn.AdaptiveAvgPool)


def _pair(v) -> tuple[int, int]:
  return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)


def _window(module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
  """(kernel, stride, dilation) of a Conv or pooling module."""
  if isinstance(module, nn.Conv):
    return (_pair(module.kernel_size), _pair(module.strides or 1),
            _pair(module.kernel_dilation or 1))
  window = _pair(module.window_shape)
  return window, _pair(module.strides or window), (1, 1)


def layer_table(model: nn.Module, input_shape: Sequence[int], **call_kwargs) -> list[LayerInfo]:
  """Per-layer output shapes, parameter counts and receptive fields of an image model.

  The model is traced with `jax.eval_shape` (nothing is computed or allocated) while
  `flax.linen.intercept_methods` records every Conv, Dense, BatchNorm and cnnrnn pooling
  module in call order.

  Receptive fields follow data flow through recorded layers: a layer's input is matched to
  the recorded output it is (or, after elementwise ops such as ReLU or a residual add, the
  recorded output of the same shape with the largest field). An input that matches nothing but is an integer
  factor f smaller than an earlier spatial output was downsampled outside any module (e.g.
  by the function `cnnrnn.nn.max_pool`); that shows as a "pool?" row with window = stride =
  f, exact for non-overlapping pooling. Otherwise the field is reported as unknown (None).

  Args:
    model: an unbound Flax module taking `[B, H, W, C]` inputs.
    input_shape: input shape with batch, e.g. (1, 224, 224, 3).
    **call_kwargs: passed to the model call (default `train=False`).

  Returns:
    One LayerInfo per recorded layer (and inferred pool), in call order.
  """
  call_kwargs.setdefault("train", False)
  records = []  # (module path, module, input, output)

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, _RECORDED) and args:
      records.append((context.module.path, context.module, args[0], out))
    return out

  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

  def init(x):
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.key(0), x, **call_kwargs)

  variables = jax.eval_shape(init, x)
  params = traverse_util.flatten_dict(dict(variables.get("params", {})))

  # Field state of recorded arrays: id -> (shape, (rh, rw), (jump_h, jump_w)).
  state: dict[int, tuple[tuple[int, ...], Any, tuple[int, int]]] = {}
  history: list[tuple[tuple[int, ...], Any, tuple[int, int]]] = [
      (tuple(input_shape), (1, 1), (1, 1))]
  rows = []

  def input_state(arr):
    if id(arr) in state:
      return state[id(arr)]
    same = [h for h in history if h[0] == tuple(arr.shape) and h[1] is not None]
    if same:  # after a residual add the field is the largest of the branches
      return max(same, key=lambda h: h[1])
    if len(arr.shape) == 4:  # downsampled outside any module?
      for shape, field, jump in reversed(history):
        if len(shape) == 4 and field is not None and shape[-1] == arr.shape[-1]:
          fh, rem_h = divmod(shape[1], arr.shape[1])
          fw, rem_w = divmod(shape[2], arr.shape[2])
          if fh >= 2 and fw >= 2 and rem_h < fh and rem_w < fw:
            field = (field[0] + (fh - 1) * jump[0], field[1] + (fw - 1) * jump[1])
            jump = (jump[0] * fh, jump[1] * fw)
            rows.append(LayerInfo("(inferred pool)", "pool?", tuple(arr.shape), 0, (fh, fw),
                                  (fh, fw), field))
            return tuple(arr.shape), field, jump
    return tuple(arr.shape), None, (1, 1)

  seen = set()
  for path, module, inp, out in records:
    _, field, jump = input_state(inp)
    kernel = stride = None
    if isinstance(module, _SPATIAL):
      kernel, stride, dilation = _window(module)
      if field is not None:
        field = tuple(f + d * (k - 1) * j for f, k, d, j in zip(field, kernel, dilation, jump))
        jump = tuple(j * s for j, s in zip(jump, stride))
    elif isinstance(module, nn.Dense):
      field = None
    elif isinstance(module, cnn.AdaptiveAvgPool):
      field = None  # bins differ in size: no single field
    n_params = 0
    if path not in seen:  # a module called twice holds its parameters once
      seen.add(path)
      n_params = sum(count_params(v) for p, v in params.items() if p[:-1] == path)
    out_shape = tuple(out.shape)
    state[id(out)] = (out_shape, field, jump)
    history.append((out_shape, field, jump))
    rows.append(LayerInfo("/".join(path), type(module).__name__, out_shape, n_params, kernel,
                          stride, field))
  return rows


def format_layer_table(rows: Sequence[LayerInfo]) -> str:
  """`layer_table` rows as an aligned text table with a parameter total."""

  def pair(v):
    return "-" if v is None else f"{v[0]}x{v[1]}"

  header = ("layer", "kind", "output", "params", "kernel", "stride", "receptive field")
  lines = [header] + [
      (r.name, r.kind, "x".join(map(str, r.output_shape[1:])), f"{r.params:,}", pair(r.kernel),
       pair(r.stride), pair(r.receptive_field)) for r in rows]
  lines.append(("total", "", "", f"{sum(r.params for r in rows):,}", "", "", ""))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
