"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998), the classic 32x32 layout."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnrnn import nn as cnn

_ACTIVATIONS: dict[str, Callable] = {"relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid}
_POOLS: dict[str, Callable] = {"max": cnn.max_pool, "avg": cnn.avg_pool}


class LeNet5(nn.Module):
  """conv 6@5x5 -> pool 2 -> conv 16@5x5 -> pool 2 -> dense 120 -> 84 -> num_classes.

  Inputs must be 32x32, the paper's layout (MNIST's 28x28 digits padded by 2 pixels on each
  side: `dataset.pad_to = 32`); other sizes raise a ValueError rather than build a network of
  a different size (28x28 would give a 4x4 map and a dense layer of 256 inputs). On 32x32x1
  inputs with 10 classes this has 61,706 parameters. The paper's C5 layer is a
  5x5 convolution over a 5x5 map, i.e. exactly the dense 400 -> 120 layer used here.
  The paper uses scaled tanh and trainable subsampling; `activation="tanh", pooling="avg"`
  is the closest parameter-free form, the defaults (ReLU, max) train faster.
  `num_classes=0` drops the head and returns the 84 features it would read.

  Attributes:
    num_classes: size of the output layer.
    activation: "relu", "tanh" or "sigmoid".
    pooling: "max" or "avg".
    dtype: compute dtype.
    param_dtype: parameter storage dtype.
  """

  num_classes: int = 10
  activation: str = "relu"
  pooling: str = "max"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: [B, 32, 32, C] images. Returns: [B, num_classes] logits."""
    del train  # No dropout or batch norm in LeNet-5.
    if x.shape[-3:-1] != (32, 32):
      raise ValueError(f"lenet5 takes 32x32 images, got {x.shape[-3]}x{x.shape[-2]} (input "
                       f"shape {tuple(x.shape)}); pad them to 32x32 (e.g. dataset.pad_to=32 "
                       "for MNIST's 28x28)")
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"model.activation={self.activation!r}; allowed: {sorted(_ACTIVATIONS)}")
    if self.pooling not in _POOLS:
      raise ValueError(f"model.pooling={self.pooling!r}; allowed: {sorted(_POOLS)}")
    act, pool = _ACTIVATIONS[self.activation], _POOLS[self.pooling]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = act(cnn.Conv(6, (5, 5), padding="VALID", name="conv1", **kw)(x))  # (B, 28, 28, 6)
    x = pool(x, (2, 2))  # (B, 14, 14, 6)
    x = act(cnn.Conv(16, (5, 5), padding="VALID", name="conv2", **kw)(x))  # (B, 10, 10, 16)
    x = pool(x, (2, 2))  # (B, 5, 5, 16)
    x = x.reshape(x.shape[0], -1)  # (B, 400)
    x = act(nn.Dense(120, name="fc1", **kw)(x))
    x = act(nn.Dense(84, name="fc2", **kw)(x))
    if self.num_classes == 0:
      return x  # [B, 84] features.
    return nn.Dense(self.num_classes, name="head", **kw)(x)
