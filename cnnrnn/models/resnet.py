"""ResNet (He, Zhang, Ren & Sun 2015): the ImageNet models and the CIFAR models of section 4.2.

One `ResNet` class serves both; a variant is data (stage sizes, block type, widths, stem,
shortcut type):

- ImageNet (torchvision layout, so its weights load via `cnnrnn.interop.torch`): 7x7/2 stem
  conv + BN + ReLU + 3x3/2 max pool, four stages of widths 64-512, projection shortcuts,
  global average pooling, a dense head. resnet50 has 25,557,032 parameters with 1000 classes.
- CIFAR (paper section 4.2): 3x3 stem conv with 16 filters, three stages of n basic blocks
  with 16, 32, 64 filters (depth 6n + 2), option A (zero-padding, parameter-free) shortcuts.
  cifar_resnet20 has 269,722 parameters with 10 classes ("0.27M" in the paper's table 6).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnrnn import nn as cnn

IMAGENET_STAGES: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110)


class ResNet(nn.Module):
  """Stem -> stages of residual blocks (stride 2 at the first block of every later stage) -> head.

  Attributes:
    stage_sizes: residual blocks in each stage.
    block: "basic" or "bottleneck" (see `cnnrnn.nn.BasicBlock`, `cnnrnn.nn.BottleneckBlock`).
    widths: base channels of each stage (the bottleneck output has 4x).
    stem: "imagenet" (7x7/2 conv + 3x3/2 max pool) or "cifar" (3x3 conv).
    stem_width: channels of the stem convolution.
    shortcut: "projection" (torchvision, option B) or "pad" (option A).
    num_classes: output size; 0 drops the head and returns the pooled features [B, C].
    zero_init_residual: start each block's last BatchNorm scale at 0 (Goyal et al. 2017).
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Submodules: `stem` (ConvBN), `stem_pool` (ImageNet stem), `stage{s}_block{b}` (s from 1,
  b from 0), `head`.
  """

  stage_sizes: Sequence[int]
  block: str = "basic"
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  stem_width: int = 64
  shortcut: str = "projection"
  num_classes: int = 1000
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: [B, H, W, C] images. Returns: [B, num_classes] logits."""
    if self.block not in cnn.RESIDUAL_BLOCKS:
      raise ValueError(f"model.block={self.block!r}; allowed: {sorted(cnn.RESIDUAL_BLOCKS)}")
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"model.stem={self.stem!r}; allowed: ['cifar', 'imagenet']")
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} "
                       "must have the same length")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.stem == "imagenet":
      x = nn.relu(cnn.ConvBN(self.stem_width, 7, 2, name="stem", **kw)(x, train=train))
      x = cnn.MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)), name="stem_pool")(x)  # (B, H/4, W/4, 64)
    else:
      x = nn.relu(cnn.ConvBN(self.stem_width, 3, 1, name="stem", **kw)(x, train=train))
    block_cls = cnn.RESIDUAL_BLOCKS[self.block]
    for s, (n, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
      for b in range(n):
        strides = 2 if (s > 1 and b == 0) else 1
        x = block_cls(width, strides, shortcut=self.shortcut,
                      zero_init_residual=self.zero_init_residual, name=f"stage{s}_block{b}",
                      **kw)(x, train=train)
    x = x.mean(axis=(1, 2))  # global average pool: (B, C)
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, name="head", **kw)(x)


def resnet(depth: int) -> functools.partial:
  """The registry constructor of the ImageNet ResNet-`depth` (18, 34, 50, 101 or 152)."""
  if depth not in IMAGENET_STAGES:
    raise ValueError(f"ImageNet ResNet depth {depth}; allowed: {sorted(IMAGENET_STAGES)}")
  block, stages = IMAGENET_STAGES[depth]
  return functools.partial(ResNet, stage_sizes=stages, block=block)


def cifar_resnet(depth: int) -> functools.partial:
  """The registry constructor of the CIFAR ResNet-`depth` (6n + 2 layers, n blocks per stage)."""
  if (depth - 2) % 6 or depth < 8:
    raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (e.g. {CIFAR_DEPTHS}); got {depth}")
  n = (depth - 2) // 6
  return functools.partial(ResNet, stage_sizes=(n, n, n), block="basic", widths=(16, 32, 64),
                           stem="cifar", stem_width=16, shortcut="pad", num_classes=10)
