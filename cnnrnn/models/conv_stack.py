"""A configurable plain convolutional network: conv blocks, then dense layers."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnrnn import nn as cnn


class ConvStack(nn.Module):
  """[conv kxk -> (BatchNorm) -> ReLU -> (pool 2x2)] x len(features) -> dense layers.

  Attributes:
    num_classes: output size.
    features: channels of each conv block.
    kernel_size: square kernel size of every conv.
    pool_every: max-pool 2x2 after every this many conv blocks (0: never).
    dense: widths of the hidden dense layers after global flattening.
    batch_norm: BatchNorm after each conv.
    dropout: dropout rate before each dense layer.
    global_pool: average over space instead of flattening (any input size then works).

  `num_classes=0` (timm's convention) drops the head and returns the features it would
  read: [B, D] after the dense layers or the global pool, or, with neither, the last conv
  map [B, H', W', C] unflattened (the feature grid a captioner attends over).
  """

  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  pool_every: int = 1
  dense: Sequence[int] = (128,)
  batch_norm: bool = False
  dropout: float = 0.0
  global_pool: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: [B, H, W, C] images. Returns: [B, num_classes] logits (features when
    num_classes=0, see the class docstring)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    k = self.kernel_size
    for i, f in enumerate(self.features):
      x = cnn.Conv(f, (k, k), padding="SAME", use_bias=not self.batch_norm, name=f"conv{i}",
                   **kw)(x)
      if self.batch_norm:
        x = cnn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}", **kw)(x)
      x = nn.relu(x)
      if self.pool_every and (i + 1) % self.pool_every == 0:
        x = cnn.max_pool(x, (2, 2))
    if self.num_classes == 0 and not self.global_pool and not self.dense:
      return x  # The feature grid [B, H', W', C].
    x = x.mean(axis=(1, 2)) if self.global_pool else x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.dense):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = nn.relu(nn.Dense(width, name=f"fc{i}", **kw)(x))
    if self.num_classes == 0:
      return x  # [B, D] features.
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="head", **kw)(x)
