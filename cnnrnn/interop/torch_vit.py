"""timm Vision Transformer state dicts <-> `cnnrnn.models.ViT` variables (used by torch_zoo).

timm's names and layouts (`timm.models.vision_transformer.VisionTransformer`):

    patch_embed.proj.weight [D, C, p, p]   -> patch_embed/kernel [p, p, C, D]
    cls_token [1, 1, D], pos_embed [1, P + N, D]   (same layout; no cls_token without one)
    blocks.{i}.norm1 / norm2 .weight, .bias        -> block{i}/norm1 / norm2 scale, bias
    blocks.{i}.attn.qkv.weight [3 * H * Dh, D]     -> block{i}/attn/qkv/kernel [D, 3, H, Dh]
    blocks.{i}.attn.qkv.bias [3 * H * Dh]          -> block{i}/attn/qkv/bias [3, H, Dh]
    blocks.{i}.attn.proj.weight [D, H * Dh]        -> block{i}/attn/out/kernel [H, Dh, D]
    blocks.{i}.mlp.fc1 / fc2 .weight, .bias        -> block{i}/mlp/fc1 / fc2 (transposed)
    norm (class token) or fc_norm (global average pooling) .weight, .bias -> norm
    head.weight [K, D], head.bias                  -> head/kernel [D, K], head/bias

A state dict whose position embeddings cover another grid than the model's `image_size` is
resampled while converting (bicubic, antialiased: timm's `resample_abs_pos_embed`).
"""

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from cnnrnn.interop.entries import Entry
from cnnrnn.interop.entries import conv_to_flax as _conv_to_flax
from cnnrnn.interop.entries import conv_to_torch as _conv_to_torch
from cnnrnn.interop.entries import identity as _identity
from cnnrnn.interop.entries import transpose as _dense
from cnnrnn.models import vit as vit_lib


def _qkv_rules(heads: int, head_dim: int):
  def kernel_to_flax(w):  # [3 * H * Dh, D] -> [D, 3, H, Dh]
    return w.reshape(3, heads, head_dim, w.shape[-1]).transpose(3, 0, 1, 2)

  def kernel_to_torch(k):
    return k.transpose(1, 2, 3, 0).reshape(3 * heads * head_dim, k.shape[0])

  def bias_to_flax(b):
    return b.reshape(3, heads, head_dim)

  def bias_to_torch(b):
    return b.reshape(3 * heads * head_dim)

  return (kernel_to_flax, kernel_to_torch), (bias_to_flax, bias_to_torch)


def _proj_rules(heads: int, head_dim: int):
  def to_flax(w):  # [D, H * Dh] -> [H, Dh, D]
    return w.T.reshape(heads, head_dim, w.shape[0])

  def to_torch(k):
    return k.reshape(heads * head_dim, k.shape[-1]).T

  return to_flax, to_torch


def entries(model, abstract: Mapping[str, Any]):
  """`torch_zoo.Family.entries` for ViT: (entries, no extra keys)."""
  heads = model.num_heads
  head_dim = model.hidden_dim // heads
  (qkv_k, qkv_b) = _qkv_rules(heads, head_dim)
  proj = _proj_rules(heads, head_dim)
  out = [Entry("patch_embed.proj.weight", "params", ("patch_embed", "kernel"), _conv_to_flax,
               _conv_to_torch),
         Entry("patch_embed.proj.bias", "params", ("patch_embed", "bias"), _identity, _identity)]
  params = abstract["params"]
  if "cls_token" in params:
    out.append(Entry("cls_token", "params", ("cls_token",), _identity, _identity))
  out.append(Entry("pos_embed", "params", ("pos_embed",), _identity, _identity))
  norm_names = {"scale": "weight", "bias": "bias"}
  for i in range(model.depth):
    b, t = f"block{i}", f"blocks.{i}"
    for norm in ("norm1", "norm2"):
      for leaf, tleaf in norm_names.items():
        out.append(Entry(f"{t}.{norm}.{tleaf}", "params", (b, norm, leaf), _identity, _identity))
    out += [Entry(f"{t}.attn.qkv.weight", "params", (b, "attn", "qkv", "kernel"), *qkv_k),
            Entry(f"{t}.attn.qkv.bias", "params", (b, "attn", "qkv", "bias"), *qkv_b),
            Entry(f"{t}.attn.proj.weight", "params", (b, "attn", "out", "kernel"), *proj),
            Entry(f"{t}.attn.proj.bias", "params", (b, "attn", "out", "bias"), _identity,
                  _identity)]
    for fc in ("fc1", "fc2"):
      out += [Entry(f"{t}.mlp.{fc}.weight", "params", (b, "mlp", fc, "kernel"), _dense, _dense),
              Entry(f"{t}.mlp.{fc}.bias", "params", (b, "mlp", fc, "bias"), _identity, _identity)]
  final = "norm" if model.pooling == "token" else "fc_norm"
  for leaf, tleaf in norm_names.items():
    out.append(Entry(f"{final}.{tleaf}", "params", ("norm", leaf), _identity, _identity))
  out += [Entry("head.weight", "params", ("head", "kernel"), _dense, _dense),
          Entry("head.bias", "params", ("head", "bias"), _identity, _identity)]
  return out, {}


def _grid(num_patches: int, what: str) -> int:
  side = math.isqrt(num_patches)
  if side * side != num_patches:
    raise ValueError(f"{what}: {num_patches} position embeddings are not a square grid")
  return side


def kwargs_from_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """The ViT keyword arguments a timm state dict's shapes fix: num_classes, image_size,
  pooling, patch_size, hidden_dim, depth, mlp_dim (not num_heads: the shapes do not say)."""
  for key in ("patch_embed.proj.weight", "pos_embed", "head.weight", "blocks.0.mlp.fc1.weight"):
    if key not in state_dict:
      raise ValueError(f"not a timm ViT state dict: no {key!r} (it has "
                       f"{', '.join(list(state_dict)[:6])}, ...)")
  d, _, p, _ = state_dict["patch_embed.proj.weight"].shape
  prefix = 1 if "cls_token" in state_dict else 0
  grid = _grid(state_dict["pos_embed"].shape[1] - prefix, "pos_embed")
  depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
  return dict(num_classes=int(state_dict["head.weight"].shape[0]), image_size=int(grid * p),
              pooling="token" if prefix else "gap", patch_size=int(p), hidden_dim=int(d),
              depth=depth, mlp_dim=int(state_dict["blocks.0.mlp.fc1.weight"].shape[0]))


def kwargs_from_variables(variables: Mapping[str, Any]) -> dict:
  """The ViT keyword arguments its variables' shapes fix (all but dropout and dtypes)."""
  params = variables["params"]
  p, _, _, d = np.shape(params["patch_embed"]["kernel"])
  prefix = 1 if "cls_token" in params else 0
  grid = _grid(np.shape(params["pos_embed"])[1] - prefix, "params/pos_embed")
  blocks = [k for k in params if k.startswith("block")]
  _, _, heads, _ = np.shape(params["block0"]["attn"]["qkv"]["kernel"])
  return dict(num_classes=int(np.shape(params["head"]["kernel"])[-1]), image_size=int(grid * p),
              pooling="token" if prefix else "gap", patch_size=int(p), hidden_dim=int(d),
              depth=len(blocks), num_heads=int(heads),
              mlp_dim=int(np.shape(params["block0"]["mlp"]["fc1"]["kernel"])[-1]))


def from_state_dict(state_dict: Mapping[str, Any], model) -> Mapping[str, Any]:
  """The state dict with its position embeddings resampled to `model`'s grid, if needed."""
  if "pos_embed" not in state_dict:
    return state_dict  # from_torch then lists the missing keys
  p, size = model.patch_size, model.image_size
  prefix = 1 if "cls_token" in state_dict else 0
  pos = state_dict["pos_embed"]
  if hasattr(pos, "detach"):
    pos = pos.detach().cpu().float().numpy()
  want = prefix + (size // p) ** 2
  if pos.shape[1] == want:
    return state_dict
  side = size // p
  resampled = np.asarray(vit_lib.resample_pos_embed(jnp.asarray(pos, jnp.float32), (side, side),
                                                    prefix))
  return {**state_dict, "pos_embed": resampled}
