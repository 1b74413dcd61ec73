"""VGG (Simonyan & Zisserman 2015), configurations A, B, D, E, with or without BatchNorm.

The layout is torchvision's (BatchNorm after every conv in the `_bn` variants, adaptive
average pooling to 7x7, dropout 0.5 in the classifier), so its weights load here
(`cnnrnn.interop.torch`). vgg16 has 138,357,544 parameters with 1000 classes.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnrnn import nn as cnn

# Convolutions per stage (each stage ends in a 2x2 max pool); widths 64, 128, 256, 512, 512.
VGG_STAGES: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),  # A
    13: (2, 2, 2, 2, 2),  # B
    16: (2, 2, 3, 3, 3),  # D
    19: (2, 2, 4, 4, 4),  # E
}


class VGG(nn.Module):
  """Stages of 3x3 convs (+ BN) + ReLU, each followed by 2x2 max pooling; then 3 dense layers.

  Any input of at least 32x32 works: an adaptive average pool brings the last feature map
  to 7x7 (224x224 inputs give 7x7 already).

  Attributes:
    stage_sizes: convolutions in each of the stages.
    widths: channels of each stage.
    batch_norm: BatchNorm after each convolution (the `_bn` variants).
    num_classes: output size; 0 drops the head and returns its [B, 4096] input features.
    dropout_rate: dropout after each hidden dense layer (paper: 0.5).
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Submodules: `stage{s}_conv{j}` and `stage{s}_bn{j}` (s from 1, j from 0), `stage{s}_pool`,
  `avgpool`, `fc1`, `fc2`, `head`.
  """

  stage_sizes: Sequence[int]
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  batch_norm: bool = False
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: [B, H, W, 3] images. Returns: [B, num_classes] logits."""
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} "
                       "must have the same length")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for s, (n, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
      for j in range(n):
        x = cnn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=cnn.he_normal_fan_out,
                     name=f"stage{s}_conv{j}", **kw)(x)
        if self.batch_norm:
          x = cnn.BatchNorm(use_running_average=not train, momentum=cnn.BN_MOMENTUM,
                            epsilon=cnn.BN_EPSILON, name=f"stage{s}_bn{j}", **kw)(x)
        x = nn.relu(x)
      x = cnn.MaxPool((2, 2), name=f"stage{s}_pool")(x)
    x = cnn.AdaptiveAvgPool(7, name="avgpool")(x)  # (B, 7, 7, 512)
    x = x.reshape(x.shape[0], -1)  # (B, 25088), (h, w, c) order
    dense_init = nn.initializers.normal(0.01)  # torchvision's init of VGG's linear layers
    for i in (1, 2):
      x = nn.relu(nn.Dense(4096, kernel_init=dense_init, name=f"fc{i}", **kw)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if self.num_classes == 0:
      return x  # [B, 4096] features, the head removed.
    return nn.Dense(self.num_classes, kernel_init=dense_init, name="head", **kw)(x)


def vgg(depth: int, batch_norm: bool = False) -> functools.partial:
  """The registry constructor of VGG-`depth` (11, 13, 16 or 19)."""
  if depth not in VGG_STAGES:
    raise ValueError(f"VGG depth {depth}; allowed: {sorted(VGG_STAGES)}")
  return functools.partial(VGG, stage_sizes=VGG_STAGES[depth], batch_norm=batch_norm)
