"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) in torchvision's single-tower layout.

torchvision's variant (from Krizhevsky's "One weird trick", 2014) has 64-192-384-256-256
filters, no local response normalisation and no grouped convolutions, so its weights load
here (`cnnrnn.interop.torch`). 61,100,840 parameters with 1000 classes.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from cnnrnn import nn as cnn


class AlexNet(nn.Module):
  """conv 11x11/4 -> pool -> conv 5x5 -> pool -> 3 x conv 3x3 -> pool -> 6x6 -> 3 dense.

  Any input of at least 63x63 works: an adaptive average pool brings the last feature map
  to 6x6 (224x224 inputs give 6x6 already).

  Attributes:
    num_classes: output size; 0 drops the head and returns its [B, 4096] input features.
    dropout_rate: dropout before each of the two hidden dense layers (paper: 0.5).
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Submodules: `conv1`..`conv5`, `pool1`..`pool3`, `avgpool`, `fc1`, `fc2`, `head`.
  """

  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # (features, kernel, stride, padding, max-pool 3x3/2 after it)
  _CONVS: ClassVar[tuple[tuple[int, int, int, int, bool], ...]] = (
      (64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
      (256, 3, 1, 1, False), (256, 3, 1, 1, True))

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: [B, H, W, 3] images. Returns: [B, num_classes] logits."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pools = 0
    for i, (f, k, s, p, pool) in enumerate(self._CONVS):
      x = nn.relu(cnn.Conv(f, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                           name=f"conv{i + 1}", **kw)(x))
      if pool:
        pools += 1
        x = cnn.MaxPool((3, 3), (2, 2), name=f"pool{pools}")(x)  # overlapping: reduce_window
    x = cnn.AdaptiveAvgPool(6, name="avgpool")(x)  # (B, 6, 6, 256)
    x = x.reshape(x.shape[0], -1)  # (B, 9216), (h, w, c) order
    for i in (1, 2):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(nn.Dense(4096, name=f"fc{i}", **kw)(x))
    if self.num_classes == 0:
      return x  # [B, 4096] features, the head removed.
    return nn.Dense(self.num_classes, name="head", **kw)(x)
