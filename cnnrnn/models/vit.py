"""The Vision Transformer (Dosovitskiy et al. 2021, "An image is worth 16x16 words").

One `ViT` class; a variant is data. `decode_variant("B/16")` reads big_vision's names: a
width letter from `WIDTHS` and the patch size. With 1000 classes at 224x224 the parameter
counts are timm's (vit_tiny_patch16_224 5,717,416; vit_base_patch16_224 86,567,656), and
`cnnrnn.interop.torch` converts timm's state dicts both ways with logits equal to float32
rounding. The details that decide that parity: pre-LN blocks with LayerNorm epsilon 1e-6,
exact (erf) GELU, the class token concatenated before the position embeddings are added,
q/k/v fused and head-major, patches flattened row-major.

Small images take the same class with other fields, e.g. `create("vit", patch_size=4,
image_size=32, hidden_dim=192, depth=6, num_heads=3, mlp_dim=384, num_classes=10)`.

Position embeddings are learned for the grid of `image_size`. Another input size works too:
the embeddings are then resampled on every call (bicubic with antialiasing, as timm's
`resample_abs_pos_embed`); `resample_position_embeddings(variables, grid)` does it once,
for a model created with the new `image_size`.
"""

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnrnn import nn as cnn
from cnnrnn.nn.transformer import TransformerEncoderBlock

# Width letter -> (hidden_dim, depth, mlp_dim, num_heads), as big_vision's `decode_variant`.
WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}
# Registry name -> variant.
REGISTRY_VARIANTS = {"vit_ti16": "Ti/16", "vit_s16": "S/16", "vit_b16": "B/16",
                     "vit_b32": "B/32", "vit_l16": "L/16", "vit_h14": "H/14"}
POOLINGS = ("token", "gap")
LAYER_NORM_EPSILON = 1e-6


def decode_variant(variant: str) -> dict[str, int]:
  """"B/16" -> {"hidden_dim": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12,
  "patch_size": 16}.

  Raises:
    ValueError: not WIDTH/PATCH with a width from `WIDTHS`.
  """
  match = re.fullmatch(r"([A-Za-z]+)/(\d+)", variant)
  if not match or match.group(1) not in WIDTHS:
    raise ValueError(f"ViT variant {variant!r}; allowed: WIDTH/PATCH with WIDTH in "
                     f"{', '.join(WIDTHS)}, e.g. 'B/16'")
  hidden_dim, depth, mlp_dim, num_heads = WIDTHS[match.group(1)]
  return dict(hidden_dim=hidden_dim, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
              patch_size=int(match.group(2)))


def resample_pos_embed(pos_embed: jax.Array, new_grid: tuple[int, int],
                       num_prefix_tokens: int = 1,
                       old_grid: tuple[int, int] | None = None) -> jax.Array:
  """Resizes position embeddings to another patch grid, as timm's `resample_abs_pos_embed`.

  The prefix (class token) embeddings are kept; the grid's are resized bicubically with
  antialiasing (`jax.image.resize(method="cubic", antialias=True)` equals torch's
  `interpolate(mode="bicubic", antialias=True, align_corners=False)`).

  Args:
    pos_embed: [1, P + h * w, D].
    new_grid: (h', w').
    num_prefix_tokens: P (1 with a class token, 0 without).
    old_grid: (h, w); default square.

  Returns:
    [1, P + h' * w', D], in pos_embed's dtype.
  """
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  n, d = grid.shape[1], grid.shape[2]
  if old_grid is None:
    side = math.isqrt(n)
    if side * side != n:
      raise ValueError(f"position embeddings of {n} patches are not a square grid; pass old_grid")
    old_grid = (side, side)
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  grid = grid.reshape(1, *old_grid, d).astype(jnp.float32)  # [1, h, w, D]
  grid = jax.image.resize(grid, (1, *new_grid, d), method="cubic", antialias=True)
  grid = grid.reshape(1, new_grid[0] * new_grid[1], d).astype(pos_embed.dtype)
  return jnp.concatenate([prefix, grid], axis=1)


def resample_pos_embed_to_shape(pos_embed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Resamples square-grid position embeddings [1, P + n, D] to `shape` [1, P + m, D].

  P (1 with a class token, 0 without) is the one that makes both grids square (1 when both
  do). Used by `cnnrnn.transfer` when a pretrained ViT meets another resolution.
  """
  old, new = pos_embed.shape[1], shape[1]
  for prefix in (1, 0):
    a, b = old - prefix, new - prefix
    if a > 0 and b > 0 and math.isqrt(a) ** 2 == a and math.isqrt(b) ** 2 == b:
      side = math.isqrt(b)
      return np.asarray(resample_pos_embed(jnp.asarray(pos_embed), (side, side), prefix))
  raise ValueError(f"cannot resample position embeddings {tuple(pos_embed.shape)} to {shape}: "
                   "neither is a square grid (with or without a class token)")


def resample_position_embeddings(variables: Mapping[str, Any], new_grid: int | tuple[int, int],
                                 ) -> dict[str, Any]:
  """The variables of a ViT with its position embeddings resampled to `new_grid` patches.

  The result belongs to the model with `image_size = new_grid * patch_size` (which then runs
  at that size without resampling on every call).

  Args:
    variables: {"params": ...} of a ViT (with "pos_embed"; "cls_token" if it has one).
    new_grid: patches per side, or (rows, columns).

  Returns:
    A copy of `variables` with params/pos_embed [1, P + h * w, D].
  """
  params = dict(variables["params"])
  if isinstance(new_grid, int):
    new_grid = (new_grid, new_grid)
  prefix = 1 if "cls_token" in params else 0
  params["pos_embed"] = resample_pos_embed(params["pos_embed"], tuple(new_grid), prefix)
  return {**variables, "params": params}


class ViT(nn.Module):
  """Patch embedding -> [class token] + position embeddings -> pre-LN encoder -> norm -> head.

  Attributes:
    num_classes: output size.
    patch_size: square patch side (the stride of the patch-embedding convolution).
    hidden_dim: token width D.
    depth: number of encoder blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of each block's MLP.
    image_size: side of the square images whose patch grid the position embeddings cover.
    pooling: "token" (the class token's final state, as the paper and timm) or "gap" (no
      class token; the mean over patches, then the final LayerNorm, as timm's
      global_pool="avg", class_token=False).
    dropout_rate: dropout after the position embeddings and inside the blocks.
    attention_dropout_rate: dropout on the attention weights.
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Submodules / params: `patch_embed` (`cnnrnn.nn.Conv`), `cls_token` [1, 1, D] (token pooling),
  `pos_embed` [1, P + N, D], `block{i}` (`cnnrnn.nn.TransformerEncoderBlock`), `norm`
  (LayerNorm), `head` (Dense, zero-initialised as in big_vision, so fine-tuning starts
  from uniform predictions).
  """

  num_classes: int = 1000
  patch_size: int = 16
  hidden_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  image_size: int = 224
  pooling: str = "token"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, return_attention: bool = False):
    """Args:
      images: [B, H, W, C] with H and W multiples of patch_size.
      train: dropout on.
      return_attention: also return every block's attention weights.

    Returns:
      logits [B, num_classes], or (logits, attention [depth, B, heads, T, T]) with T the
      number of tokens (patches, plus one with a class token).

    Raises:
      ValueError: a bad pooling, or an image side that is not a multiple of patch_size.
    """
    if self.pooling not in POOLINGS:
      raise ValueError(f"model.pooling={self.pooling!r}; allowed: {', '.join(POOLINGS)}")
    p = self.patch_size
    _, h, w, _ = images.shape
    if h % p or w % p or self.image_size % p:
      raise ValueError(f"ViT with patch_size={p} needs image sides that are multiples of {p}; "
                       f"got images {h}x{w}, model.image_size={self.image_size}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = cnn.Conv(self.hidden_dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed",
                 **kw)(images)  # [B, h, w, D]
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)  # [B, N, D], patches row-major as timm's flatten(2)
    prefix = 0
    if self.pooling == "token":
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
      prefix = 1
    stored = self.image_size // p
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, prefix + stored * stored, d),
                     self.param_dtype)
    pos = resample_pos_embed(pos, (gh, gw), prefix, (stored, stored))  # identity at image_size
    x = x + pos.astype(x.dtype)  # [B, T, D]
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)

    attention = []
    for i in range(self.depth):
      block = TransformerEncoderBlock(
          num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate, norm_first=True,
          activation="gelu", layer_norm_epsilon=LAYER_NORM_EPSILON, fused_qkv=True,
          name=f"block{i}", **kw)
      if return_attention:
        x, weights = block(x, train=train, return_weights=True)
        attention.append(weights)  # [B, heads, T, T]
      else:
        x = block(x, train=train)

    norm = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, name="norm", **kw)
    features = norm(x)[:, 0] if self.pooling == "token" else norm(x.mean(axis=1))  # [B, D]
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head",
                      **kw)(features)
    if return_attention:
      return logits, jnp.stack(attention)
    return logits


def vit_variant(variant: str) -> functools.partial:
  """The registry constructor of a variant, e.g. vit_variant("B/16")."""
  return functools.partial(ViT, **decode_variant(variant))
