"""Fully convolutional semantic segmentation on a zoo ResNet backbone.

`Segmenter` runs a ResNet of the zoo (any `resnet{18..152}` or `cifar_resnet{6n + 2}`) up
to its last stage, keeps the output of the stem and of every stage, and decodes them into
`num_classes` logits per pixel at the input's resolution, with one of two decoders:

- "fcn" (Long, Shelhamer & Darrell 2015, the FCN-8s idea of skip upsampling): a 1x1
  convolution scores each kept feature map; from the deepest up, the running score map is
  upsampled bilinearly to the next shallower map's size and added to its score; the last
  sum is upsampled to the input's size.
- "unet" (Ronneberger, Fischer & Brox 2015): from the deepest up, the running map is
  upsampled bilinearly to the next shallower map's size, concatenated with it, and passed
  through two 3x3 conv + BatchNorm + ReLU layers with that map's channels; a 1x1
  convolution scores the result, upsampled to the input's size.

The backbone is the top-level module `backbone`, with exactly the names of the classifier's
own modules (`stem`, `stage{s}_block{b}`; no `head`): a classifier's checkpoint loads into it
with `transfer.target_module="backbone"` (cnnrnn.transfer). The decoder is the top-level
module `head`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnrnn import nn as cnn
from cnnrnn.models.resnet import CIFAR_DEPTHS, IMAGENET_STAGES, ResNet, cifar_resnet, resnet

Array = jax.Array

BACKBONES = {**{f"resnet{d}": resnet(d) for d in IMAGENET_STAGES},
             **{f"cifar_resnet{d}": cifar_resnet(d) for d in CIFAR_DEPTHS}}
DECODERS = ("fcn", "unet")


def backbone_variant(name: str) -> dict:
  """The ResNet fields of backbone `name`: one of `BACKBONES`, or any CIFAR depth 6n + 2
  written `cifar_resnet{depth}` (e.g. the small `cifar_resnet8`).

  Raises:
    ValueError: naming `model.backbone` and the allowed names.
  """
  if name in BACKBONES:
    return dict(BACKBONES[name].keywords)
  depth = name.removeprefix("cifar_resnet")
  if name.startswith("cifar_resnet") and depth.isdigit() and (int(depth) - 2) % 6 == 0:
    return dict(cifar_resnet(int(depth)).keywords)
  raise ValueError(f"model.backbone={name!r}; allowed: {', '.join(BACKBONES)} or any "
                   f"cifar_resnet{{6n + 2}}")


class ResNetFeatures(ResNet):
  """A `ResNet` that returns the stem's and every stage's output instead of logits.

  Same attributes and submodule names as `ResNet` (its `num_classes` is ignored: no head).
  """

  @nn.compact
  def __call__(self, x, train: bool = False) -> list[Array]:
    """Args: x: [B, H, W, C]. Returns: [stem output, stage 1 output, ...], each [B, h, w, c],
    from the finest to the coarsest."""
    if self.block not in cnn.RESIDUAL_BLOCKS:
      raise ValueError(f"model.block={self.block!r}; allowed: {sorted(cnn.RESIDUAL_BLOCKS)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    stride = 2 if self.stem == "imagenet" else 1
    k = 7 if self.stem == "imagenet" else 3
    x = nn.relu(cnn.ConvBN(self.stem_width, k, stride, name="stem", **kw)(x, train=train))
    maps = [x]
    if self.stem == "imagenet":
      x = cnn.MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)), name="stem_pool")(x)
    block_cls = cnn.RESIDUAL_BLOCKS[self.block]
    for s, (n, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
      for b in range(n):
        strides = 2 if (s > 1 and b == 0) else 1
        x = block_cls(width, strides, shortcut=self.shortcut,
                      zero_init_residual=self.zero_init_residual, name=f"stage{s}_block{b}",
                      **kw)(x, train=train)
      maps.append(x)
    return maps


def _resize(x: Array, height: int, width: int) -> Array:
  """Bilinear resize of [B, h, w, C] to [B, height, width, C]."""
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="bilinear")


class SegmentationHead(nn.Module):
  """The decoder (module docstring): feature maps, finest first -> [B, H, W, num_classes].

  Attributes:
    num_classes: classes per pixel (background included).
    decoder: "fcn" or "unet".
    dtype, param_dtype: compute and parameter dtypes.

  Submodules: "fcn": `score{i}` (1x1 conv per map); "unet": `up{i}_conv{0,1}` (ConvBN) and
  `score`.
  """

  num_classes: int
  decoder: str = "fcn"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps: list[Array], size: tuple[int, int], train: bool = False) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.decoder == "fcn":
      score = None
      for i in reversed(range(len(maps))):
        s = cnn.Conv(self.num_classes, (1, 1), name=f"score{i}", **kw)(maps[i])
        score = s if score is None else s + _resize(score, *s.shape[1:3])
    else:
      x = maps[-1]
      for i in reversed(range(len(maps) - 1)):
        skip = maps[i]
        x = jnp.concatenate([_resize(x, *skip.shape[1:3]), skip], axis=-1)
        for j in range(2):
          x = nn.relu(cnn.ConvBN(skip.shape[-1], 3, 1, name=f"up{i}_conv{j}", **kw)(x, train))
      score = cnn.Conv(self.num_classes, (1, 1), name="score", **kw)(x)
    return _resize(score, *size)


class Segmenter(nn.Module):
  """Per-pixel classifier: a zoo ResNet backbone and an FCN or U-Net decoder (module docstring).

  Attributes:
    num_classes: classes per pixel.
    backbone: a name in `BACKBONES` (resnet18 ... resnet152, cifar_resnet20 ... 110) or any
      `cifar_resnet{6n + 2}` (`backbone_variant`).
    decoder: "fcn" or "unet".
    dtype, param_dtype: compute and parameter dtypes.

  Submodules: `backbone` (ResNetFeatures), `head` (SegmentationHead).
  """

  num_classes: int
  backbone: str = "cifar_resnet20"
  decoder: str = "fcn"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Args: x: [B, H, W, C] images. Returns: [B, H, W, num_classes] logits."""
    variant = backbone_variant(self.backbone)
    if self.decoder not in DECODERS:
      raise ValueError(f"model.decoder={self.decoder!r}; allowed: {', '.join(DECODERS)}")
    if x.ndim != 4:
      raise ValueError(f"inputs must be [batch, height, width, channels], got shape {x.shape}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    maps = ResNetFeatures(**variant, name="backbone", **kw)(x.astype(self.dtype), train)
    return SegmentationHead(self.num_classes, self.decoder, name="head", **kw)(
        maps, x.shape[1:3], train)
