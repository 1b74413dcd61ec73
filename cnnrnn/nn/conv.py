"""Convolutional building blocks: conv + BatchNorm, and the residual blocks of ResNet.

Padding is explicit and symmetric, as in PyTorch (`padding=k // 2`), rather than "SAME":
for a stride-2 convolution on an even input, "SAME" pads (lo, hi) = (k//2 - 1, k//2), which
shifts the sampling grid by one pixel and would break weight compatibility with torchvision.

BatchNorm defaults are PyTorch's (eps 1e-5, momentum 0.1, i.e. Flax momentum 0.9). One
difference remains in training mode: PyTorch updates `running_var` with the unbiased batch
variance, Flax with the biased one (a factor n / (n - 1), n = B*H*W). Outputs are identical.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from cnnrnn.nn.norm import BatchNorm

# He et al. 2015 ("Delving deep into rectifiers") normal init, fan-out mode, as torchvision's ResNet/VGG.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9  # Flax convention: running = momentum * running + (1 - momentum) * batch.
BN_EPSILON = 1e-5


Conv = nn.Conv
"""`flax.linen.Conv` itself: every convolution of the model zoo is Flax's (same parameters,
`kernel` [KH, KW, C, O] and `bias` [O])."""


def torch_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding k // 2 on both spatial axes, as `torch.nn.Conv2d(padding=k // 2)`."""
  p = kernel_size // 2
  return ((p, p), (p, p))


class ConvBN(nn.Module):
  """k x k convolution (no bias) followed by BatchNorm; no activation.

  Attributes:
    features: output channels.
    kernel_size: square kernel size; padding is k // 2 on each side.
    strides: spatial stride.
    zero_init_scale: initialise the BatchNorm scale (gamma) to 0, so that a residual branch
      ending in this layer starts as the identity (Goyal et al. 2017).
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Submodules: `conv` (`Conv`) and `bn` (`BatchNorm`).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  zero_init_scale: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: [B, H, W, C]. Returns: [B, H / strides, W / strides, features] (floored)."""
    k, s = self.kernel_size, self.strides
    x = Conv(self.features, (k, k), strides=(s, s), padding=torch_padding(k), use_bias=False,
             kernel_init=he_normal_fan_out, dtype=self.dtype, param_dtype=self.param_dtype,
             name="conv")(x)
    scale_init = nn.initializers.zeros if self.zero_init_scale else nn.initializers.ones
    return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     scale_init=scale_init, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="bn")(x)


def pad_shortcut(x, features: int, strides: int):
  """He et al. 2015 option A shortcut: subsample by `strides`, zero-pad the new channels.

  The extra channels are split evenly before and after the existing ones; this identity
  shortcut has no parameters.

  Args:
    x: [B, H, W, C].
    features: output channels (>= C).
    strides: spatial subsampling factor.

  Returns:
    [B, ceil(H / strides), ceil(W / strides), features].
  """
  c = x.shape[-1]
  if features < c:
    raise ValueError(f"option-A shortcut cannot reduce channels ({c} -> {features})")
  x = x[:, ::strides, ::strides, :]
  extra = features - c
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class _ResidualBlock(nn.Module):
  """Shared shortcut logic of `BasicBlock` and `BottleneckBlock`."""

  features: int
  strides: int = 1
  shortcut: str = "projection"
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  expansion: ClassVar[int] = 1
  _SHORTCUTS: ClassVar[tuple[str, ...]] = ("projection", "pad")

  def _shortcut(self, x, *, train: bool):
    """Identity when shapes agree, else a 1x1 strided ConvBN ("projection") or option A ("pad")."""
    out = self.features * self.expansion
    if self.shortcut not in self._SHORTCUTS:
      raise ValueError(f"shortcut={self.shortcut!r}; allowed: {list(self._SHORTCUTS)}")
    if self.strides == 1 and x.shape[-1] == out:
      return x
    if self.shortcut == "pad":
      return pad_shortcut(x, out, self.strides)
    return ConvBN(out, 1, self.strides, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="downsample")(x, train=train)

  def _conv_bn(self, features: int, kernel_size: int, strides: int, index: int, last: bool) -> Callable:
    """The block's `index`-th conv + BN, named `conv{index}` / `bn{index}` like torchvision."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                padding=torch_padding(kernel_size), use_bias=False,
                kernel_init=he_normal_fan_out, name=f"conv{index}", **kw)
    scale_init = nn.initializers.zeros if (last and self.zero_init_residual) else nn.initializers.ones
    bn = BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale_init=scale_init,
                   name=f"bn{index}", **kw)
    return lambda x, train: bn(conv(x), use_running_average=not train)


class BasicBlock(_ResidualBlock):
  """ResNet basic block: 3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN, + shortcut, ReLU.

  Attributes:
    features: channels of both convolutions (and of the output; expansion 1).
    strides: stride of the first convolution (and of the shortcut).
    shortcut: "projection" (1x1 conv + BN when the shape changes: option B, torchvision) or
      "pad" (parameter-free option A of He et al. 2015, used by the CIFAR ResNets).
    zero_init_residual: start the last BN's scale at 0, so the block starts as the identity.
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Submodules: `conv1`, `bn1`, `conv2`, `bn2` and, for a projection, `downsample` (ConvBN).
  """

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: [B, H, W, C]. Returns: [B, H / strides, W / strides, features]."""
    y = nn.relu(self._conv_bn(self.features, 3, self.strides, 1, False)(x, train))
    y = self._conv_bn(self.features, 3, 1, 2, True)(y, train)
    return nn.relu(y + self._shortcut(x, train=train))


class BottleneckBlock(_ResidualBlock):
  """ResNet bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (4x channels), each with BN, + shortcut.

  The stride sits on the 3x3 convolution, as in torchvision ("ResNet v1.5"), not on the
  first 1x1 convolution as in the original paper.

  Attributes:
    features: channels of the 1x1 and 3x3 convolutions; the output has 4 * features.
    strides, shortcut, zero_init_residual, dtype, param_dtype: as in `BasicBlock`.

  Submodules: `conv1`..`conv3`, `bn1`..`bn3` and, for a projection, `downsample` (ConvBN).
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: [B, H, W, C]. Returns: [B, H / strides, W / strides, 4 * features]."""
    y = nn.relu(self._conv_bn(self.features, 1, 1, 1, False)(x, train))
    y = nn.relu(self._conv_bn(self.features, 3, self.strides, 2, False)(y, train))
    y = self._conv_bn(self.features * self.expansion, 1, 1, 3, True)(y, train)
    return nn.relu(y + self._shortcut(x, train=train))


RESIDUAL_BLOCKS: dict[str, type[_ResidualBlock]] = {"basic": BasicBlock, "bottleneck": BottleneckBlock}
