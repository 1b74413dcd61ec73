"""Weights of `torch.nn.MultiheadAttention` and `torch.nn.Transformer` <-> cnnrnn.

Layouts. torch's `in_proj_weight` [3 * H * Dh, D] stacks the q, k, v projections (rows of
each head contiguous, head-major), `out_proj.weight` [D_out, H * Dh]; cnnrnn (Flax's layout)
has `query/kernel` [D, H, Dh] (= W_q.T reshaped), `qkv/kernel` [D, 3, H, Dh] when fused,
`out/kernel` [H, Dh, D_out]. `nn.Linear.weight` [out, in] is a Dense `kernel` [in, out].

The functions take any mapping of names to arrays (torch tensors, numpy arrays, a
safetensors file) and return numpy arrays, so torch is needed only to produce the inputs.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np


def _np(x) -> np.ndarray:
  if hasattr(x, "detach"):
    x = x.detach().cpu().numpy()
  return np.asarray(x, np.float32)


def _get(state_dict: Mapping[str, Any], key: str) -> np.ndarray:
  if key not in state_dict:
    raise ValueError(f"state dict has no entry {key!r}; it has {sorted(state_dict)[:8]}...")
  return _np(state_dict[key])


def _linear(state_dict, prefix) -> dict:
  """nn.Linear -> Dense: {kernel [in, out], bias [out]}."""
  return {"kernel": _get(state_dict, prefix + "weight").T,
          "bias": _get(state_dict, prefix + "bias")}


def _layer_norm(state_dict, prefix) -> dict:
  return {"scale": _get(state_dict, prefix + "weight"), "bias": _get(state_dict, prefix + "bias")}


def mha_params_from_torch(state_dict: Mapping[str, Any], num_heads: int, *, prefix: str = "",
                          fused_qkv: bool = False) -> dict:
  """`MultiHeadAttention` params from a `torch.nn.MultiheadAttention` state dict.

  Args:
    state_dict: torch names (`in_proj_weight` or `q/k/v_proj_weight`, `in_proj_bias`,
      `out_proj.weight`, `out_proj.bias`), optionally under `prefix`.
    num_heads: H.
    prefix: key prefix, e.g. "encoder.layers.0.self_attn.".
    fused_qkv: produce the fused `qkv` layout (needs the same input for q, k and v).

  Returns:
    The params dict of `MultiHeadAttention(num_heads, fused_qkv=fused_qkv)` (numpy arrays).
  """
  sd = state_dict
  if prefix + "in_proj_weight" in sd:
    w_q, w_k, w_v = np.split(_get(sd, prefix + "in_proj_weight"), 3, axis=0)
  else:
    w_q, w_k, w_v = (_get(sd, f"{prefix}{n}_proj_weight") for n in "qkv")
  has_bias = prefix + "in_proj_bias" in sd
  e = w_q.shape[0]
  if e % num_heads:
    raise ValueError(f"embed_dim {e} is not divisible by num_heads={num_heads}")
  dh = e // num_heads
  b_q, b_k, b_v = (np.split(_get(sd, prefix + "in_proj_bias"), 3) if has_bias else
                   (None, None, None))

  def proj(w, b):
    p = {"kernel": w.T.reshape(w.shape[1], num_heads, dh)}  # [D, H, Dh]
    if b is not None:
      p["bias"] = b.reshape(num_heads, dh)
    return p

  out_w = _get(sd, prefix + "out_proj.weight")  # [D_out, H*Dh]
  params = {"out": {"kernel": out_w.T.reshape(num_heads, dh, out_w.shape[0])}}
  if has_bias:
    params["out"]["bias"] = _get(sd, prefix + "out_proj.bias")
  if fused_qkv:
    if not w_q.shape == w_k.shape == w_v.shape:
      raise ValueError("fused_qkv needs q, k and v projections of the same input width")
    params["qkv"] = {"kernel": np.stack([w.T for w in (w_q, w_k, w_v)], 1).reshape(
        w_q.shape[1], 3, num_heads, dh)}
    if has_bias:
      params["qkv"]["bias"] = np.stack([b_q, b_k, b_v]).reshape(3, num_heads, dh)
  else:
    params.update(query=proj(w_q, b_q), key=proj(w_k, b_k), value=proj(w_v, b_v))
  return params


def mha_params_to_torch(params: Mapping[str, Any], *, prefix: str = "") -> dict[str, np.ndarray]:
  """A `torch.nn.MultiheadAttention` state dict from `MultiHeadAttention` params.

  q, k and v of the same input width become `in_proj_weight`; otherwise (torch's kdim /
  vdim) `q_proj_weight`, `k_proj_weight`, `v_proj_weight`.
  """
  if "qkv" in params:
    k = _np(params["qkv"]["kernel"])  # [D, 3, H, Dh]
    kernels = [k[:, i].reshape(k.shape[0], -1) for i in range(3)]
    biases = ([_np(params["qkv"]["bias"])[i].reshape(-1) for i in range(3)]
              if "bias" in params["qkv"] else None)
  else:
    kernels = [_np(params[n]["kernel"]).reshape(_np(params[n]["kernel"]).shape[0], -1)
               for n in ("query", "key", "value")]
    biases = ([_np(params[n]["bias"]).reshape(-1) for n in ("query", "key", "value")]
              if "bias" in params["query"] else None)
  sd = {}
  if kernels[0].shape == kernels[1].shape == kernels[2].shape:
    sd[prefix + "in_proj_weight"] = np.concatenate([w.T for w in kernels], 0)
  else:
    for n, w in zip("qkv", kernels):
      sd[f"{prefix}{n}_proj_weight"] = w.T
  out = _np(params["out"]["kernel"])  # [H, Dh, D_out]
  sd[prefix + "out_proj.weight"] = out.reshape(-1, out.shape[-1]).T
  if biases is not None:
    sd[prefix + "in_proj_bias"] = np.concatenate(biases)
    sd[prefix + "out_proj.bias"] = _np(params["out"]["bias"])
  return sd


def mha_from_torch(module, *, fused_qkv: bool = False):
  """(`MultiHeadAttention`, variables) equivalent to a `torch.nn.MultiheadAttention`.

  Call the result as `module.apply(variables, q, kv, mask)` with batch-major inputs and a
  True = may-attend mask (torch's `key_padding_mask` / `attn_mask` use True = masked).
  Raises ValueError for options without a counterpart (bias_k/bias_v, add_zero_attn).
  """
  from cnnrnn.nn.attention import MultiHeadAttention  # pylint: disable=g-import-not-at-top
  if module.bias_k is not None or module.add_zero_attn:
    raise ValueError("torch MultiheadAttention with add_bias_kv / add_zero_attn has no "
                     "cnnrnn counterpart")
  if module.dropout:
    raise ValueError("convert a MultiheadAttention with dropout=0 (or set dropout_rate on "
                     "the returned module yourself)")
  params = mha_params_from_torch(module.state_dict(), module.num_heads, fused_qkv=fused_qkv)
  ours = MultiHeadAttention(module.num_heads, qkv_features=module.embed_dim,
                            out_features=module.embed_dim, fused_qkv=fused_qkv,
                            use_bias=module.in_proj_bias is not None)
  return ours, {"params": params}


def _mlp_from_torch(sd, prefix) -> dict:
  return {"fc1": _linear(sd, prefix + "linear1."), "fc2": _linear(sd, prefix + "linear2.")}


def encoder_block_from_torch(state_dict: Mapping[str, Any], num_heads: int, *, prefix: str = "",
                             fused_qkv: bool = False) -> dict:
  """`TransformerEncoderBlock` params from a `torch.nn.TransformerEncoderLayer` state dict."""
  sd = state_dict
  return {"attn": mha_params_from_torch(sd, num_heads, prefix=prefix + "self_attn.",
                                        fused_qkv=fused_qkv),
          "mlp": _mlp_from_torch(sd, prefix),
          "norm1": _layer_norm(sd, prefix + "norm1."), "norm2": _layer_norm(sd, prefix + "norm2.")}


def decoder_block_from_torch(state_dict: Mapping[str, Any], num_heads: int, *, prefix: str = "",
                             fused_qkv: bool = False) -> dict:
  """`TransformerDecoderBlock` params from a `torch.nn.TransformerDecoderLayer` state dict."""
  sd = state_dict
  return {"self_attn": mha_params_from_torch(sd, num_heads, prefix=prefix + "self_attn.",
                                             fused_qkv=fused_qkv),
          "cross_attn": mha_params_from_torch(sd, num_heads, prefix=prefix + "multihead_attn."),
          "mlp": _mlp_from_torch(sd, prefix),
          **{f"norm{i}": _layer_norm(sd, f"{prefix}norm{i}.") for i in (1, 2, 3)}}


def _linear_to_torch(p, prefix) -> dict:
  return {prefix + "weight": _np(p["kernel"]).T, prefix + "bias": _np(p["bias"])}


def _layer_norm_to_torch(p, prefix) -> dict:
  return {prefix + "weight": _np(p["scale"]), prefix + "bias": _np(p["bias"])}


def encoder_block_to_torch(params: Mapping[str, Any], *, prefix: str = "") -> dict:
  """A `torch.nn.TransformerEncoderLayer` state dict from `TransformerEncoderBlock` params."""
  return {**mha_params_to_torch(params["attn"], prefix=prefix + "self_attn."),
          **_linear_to_torch(params["mlp"]["fc1"], prefix + "linear1."),
          **_linear_to_torch(params["mlp"]["fc2"], prefix + "linear2."),
          **_layer_norm_to_torch(params["norm1"], prefix + "norm1."),
          **_layer_norm_to_torch(params["norm2"], prefix + "norm2.")}


def decoder_block_to_torch(params: Mapping[str, Any], *, prefix: str = "") -> dict:
  """A `torch.nn.TransformerDecoderLayer` state dict from `TransformerDecoderBlock` params."""
  sd = {**mha_params_to_torch(params["self_attn"], prefix=prefix + "self_attn."),
        **mha_params_to_torch(params["cross_attn"], prefix=prefix + "multihead_attn."),
        **_linear_to_torch(params["mlp"]["fc1"], prefix + "linear1."),
        **_linear_to_torch(params["mlp"]["fc2"], prefix + "linear2.")}
  for i in (1, 2, 3):
    sd.update(_layer_norm_to_torch(params[f"norm{i}"], f"{prefix}norm{i}."))
  return sd


def _num_layers(state_dict, prefix) -> int:
  layers = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
  return max(layers) + 1 if layers else 0


def transformer_from_torch(state_dict: Mapping[str, Any], num_heads: int, *,
                           fused_qkv: bool = False, model=None) -> dict:
  """Params of the `transformer` model from a `torch.nn.Transformer`-based state dict.

  Keys: `torch.nn.Transformer`'s own (`encoder.layers.{i}.*`, `encoder.norm.*`,
  `decoder.layers.{i}.*`, `decoder.norm.*`), plus, for a whole translation model,
  `src_embed.weight` and `tgt_embed.weight` (or one shared `embed.weight`),
  `src_pos.weight` / `tgt_pos.weight` (learned positions, `nn.Embedding(max_len, D)`),
  and `head.weight` [V, D], `head.bias` (or only `head_bias` [V] when tied). A torch model
  with these attribute names has exactly this state dict. Build ours with `final_norm=True`
  when the `*.norm` entries are present (torch's `nn.Transformer` always has them), the same
  `norm_first`, `activation`, `layer_norm_epsilon` and positions, and
  `scale_embeddings`/`tie_output`/`share_embeddings` matching the torch model's forward.

  Args:
    state_dict: the torch names above -> arrays.
    num_heads: attention heads.
    fused_qkv: produce fused `qkv` self-attention projections.
    model: if given, the `Transformer` the params are for: every parameter's shape is
      checked against it.

  Returns:
    The "params" dict (numpy arrays).

  Raises:
    ValueError: a key this conversion does not use, a missing key, or (with `model`) a
      parameter tree or shape that does not fit the model, each named.
  """
  sd = state_dict
  params: dict[str, Any] = {}
  for side, block in (("encoder", encoder_block_from_torch), ("decoder", decoder_block_from_torch)):
    stack = {f"layer{i}": block(sd, num_heads, prefix=f"{side}.layers.{i}.", fused_qkv=fused_qkv)
             for i in range(_num_layers(sd, f"{side}.layers."))}
    if f"{side}.norm.weight" in sd:
      stack["norm"] = _layer_norm(sd, f"{side}.norm.")
    params[side] = stack
  for name in ("src_embed", "tgt_embed", "embed"):
    if f"{name}.weight" in sd:
      params[name] = {"embedding": _get(sd, f"{name}.weight")}
  for name in ("src_pos", "tgt_pos"):
    if f"{name}.weight" in sd:
      params[name] = {"embedding": _get(sd, f"{name}.weight")}
  if "head.weight" in sd:
    params["head"] = _linear(sd, "head.")
  if "head_bias" in sd:
    params["head_bias"] = _get(sd, "head_bias")
  unused = sorted(set(sd) - set(transformer_to_torch(params)))
  if unused:
    raise ValueError(f"state dict entries with no counterpart in the transformer model: {unused}")
  if model is not None:
    _check_shapes(params, model)
  return params


def _check_shapes(params, model) -> None:
  """Raises ValueError naming every parameter whose presence or shape differs from `model`'s."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  tokens = jnp.zeros((1, 2), jnp.int32)
  want = traverse_util.flatten_dict(jax.eval_shape(
      model.init, jax.random.key(0), tokens, tokens)["params"], sep="/")
  got = traverse_util.flatten_dict(params, sep="/")
  problems = [f"{k}: missing" for k in sorted(set(want) - set(got))]
  problems += [f"{k}: not in the model" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: shape {got[k].shape}, model expects {want[k].shape}"
               for k in sorted(set(got) & set(want)) if tuple(got[k].shape) != want[k].shape]
  if problems:
    raise ValueError("converted weights do not fit the model: " + "; ".join(problems))


def transformer_to_torch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `transformer_from_torch`: a state dict with the same names."""
  sd: dict[str, np.ndarray] = {}
  for side, block in (("encoder", encoder_block_to_torch), ("decoder", decoder_block_to_torch)):
    stack = params[side]
    for name, p in stack.items():
      if name == "norm":
        sd.update(_layer_norm_to_torch(p, f"{side}.norm."))
      else:
        sd.update(block(p, prefix=f"{side}.layers.{int(name[len('layer'):])}."))
  for name in ("src_embed", "tgt_embed", "embed", "src_pos", "tgt_pos"):
    if name in params:
      sd[f"{name}.weight"] = _np(params[name]["embedding"])
  if "head" in params:
    sd.update(_linear_to_torch(params["head"], "head."))
  if "head_bias" in params:
    sd["head_bias"] = _np(params["head_bias"])
  return sd
