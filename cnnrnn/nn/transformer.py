"""Transformer blocks (Vaswani et al. 2017): MLP, encoder and decoder blocks and stacks,
positional encodings.

Post-LN (`norm_first=False`, the paper and `torch.nn.Transformer`'s default):
x = LN(x + Dropout(Sublayer(x))). Pre-LN (`norm_first=True`, ViT, GPT-2, torch's
`norm_first=True`): x = x + Dropout(Sublayer(LN(x))), usually with a final LayerNorm after
the stack (`final_norm`). Submodule names follow `torch.nn.TransformerEncoderLayer` /
timm's ViT `Block` (norm1, attn, norm2, mlp with fc1/fc2) so weight conversion reads 1:1.
"""

from collections.abc import Callable
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnrnn.nn.attention import MultiHeadAttention

Array = jax.Array


def gelu(x: Array) -> Array:
  """The exact (erf) GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, written as PyTorch computes it.

  The same function as `flax.linen.gelu(x, approximate=False)`, which writes it with erfc,
  x erfc(-x / sqrt 2) / 2: XLA:CPU's erfc costs more than its erf, and the [3152, 768] MLP
  activation of a ViT-Ti/16 batch of 16 took 4.2-5.5 ms forward and 4.6-6.1 ms for its
  vector-Jacobian product that way against 1.5-2.0 and 3.5-4.1 ms this way (one core;
  experiments/benchmarks/README.md, "The ViTs on AVX2"). The two agree to float32 rounding:
  within 2.5e-7 max(1, abs(x)) of the exact value. For very negative x, where GELU(x) is
  nearly 0, this form's error is absolute (1 + erf is rounded at float32's spacing below 1),
  as PyTorch's is, where the erfc form's is relative.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "gelu": gelu,  # Exact erf GELU, as torch/timm.
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
}


def _activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r}; allowed: {', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """Vaswani et al.'s encodings: PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...).

  Sine and cosine interleave (the paper, the PyTorch tutorial); fairseq and tensor2tensor
  concatenate [sin | cos] instead, which is a fixed permutation of the features.

  Args:
    length: number of positions L.
    dim: D (even).

  Returns:
    float32 numpy array [L, D] (a constant, folded into the compiled program).
  """
  if dim % 2:
    raise ValueError(f"sinusoidal positions need an even width, got {dim}")
  position = np.arange(length, dtype=np.float64)[:, None]
  inv_freq = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
  table = np.zeros((length, dim), np.float64)
  table[:, 0::2] = np.sin(position * inv_freq)
  table[:, 1::2] = np.cos(position * inv_freq)
  return table.astype(np.float32)


POSITIONS = ("sinusoidal", "learned")


class PositionalEncoding(nn.Module):
  """Adds position encodings to a [B, T, D] sequence.

  `learned` has one parameter, `embedding` [max_len, D] (`embedding_init`: by default
  normal with stddev 0.02, as BERT and ViT). In decode
  mode the layer keeps the next position in the "cache" collection (`cache_index`) and adds
  the encodings of positions [i, i + T) to a [B, T, D] chunk.

  Attributes:
    kind: "sinusoidal" or "learned".
    max_len: the longest sequence (learned: the table size; sinusoidal: any length works
      up to this bound).
    decode: incremental decoding.
    embedding_init: initializer of the learned table.
    param_dtype: parameter dtype.
  """

  kind: str = "sinusoidal"
  max_len: int = 1024
  decode: bool = False
  embedding_init: Callable[..., Array] = nn.initializers.normal(0.02)
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, decode: bool | None = None) -> Array:
    decode = self.decode if decode is None else decode
    if self.kind not in POSITIONS:
      raise ValueError(f"positions={self.kind!r}; allowed: {', '.join(POSITIONS)}")
    length, dim = x.shape[-2:]
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
    if self.kind == "learned":
      table = self.param("embedding", self.embedding_init, (self.max_len, dim),
                         self.param_dtype)
    else:
      table = jnp.asarray(sinusoidal_positions(self.max_len, dim))
    start = 0
    if decode:
      initialized = self.has_variable("cache", "cache_index")
      index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if initialized:
        start = index.value
        index.value = start + length
    pos = jax.lax.dynamic_slice_in_dim(table, start, length, axis=0)  # [T, D]
    return x + pos[None].astype(x.dtype)


class Mlp(nn.Module):
  """fc1 -> activation -> dropout -> fc2 -> dropout (the Transformer's position-wise FFN).

  Attributes:
    hidden_dim: fc1's width.
    out_dim: fc2's width (default: the input's).
    activation: "relu", "gelu" (exact erf, as torch/timm) or "gelu_tanh".
    dropout_rate: dropout after the activation and after fc2 (training only).
    kernel_init: Dense kernel initializer.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  hidden_dim: int
  out_dim: int | None = None
  activation: str = "relu"
  dropout_rate: float = 0.0
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """[..., D] -> [..., out_dim]."""
    act = _activation(self.activation)
    dense = functools.partial(nn.Dense, kernel_init=self.kernel_init, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    y = act(dense(self.hidden_dim, name="fc1")(x))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = dense(self.out_dim or x.shape[-1], name="fc2")(y)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class TransformerEncoderBlock(nn.Module):
  """Self-attention + MLP, each in a residual branch, post-LN or pre-LN.

  Submodules: `norm1`, `attn` (`MultiHeadAttention`), `norm2`, `mlp` (`Mlp`).

  Attributes:
    num_heads: attention heads H.
    mlp_dim: MLP hidden width.
    dropout_rate: dropout on each branch's output before the residual sum (and in the MLP).
    attention_dropout_rate: dropout on the attention weights.
    norm_first: pre-LN; False is the paper's post-LN.
    activation: MLP activation ("relu", "gelu", "gelu_tanh").
    layer_norm_epsilon: LayerNorm epsilon (torch 1e-5; ViT/timm 1e-6).
    fused_qkv: one fused q/k/v projection.
    kernel_init: kernel initializer of the attention and MLP projections.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  norm_first: bool = True
  activation: str = "relu"
  layer_norm_epsilon: float = 1e-5
  fused_qkv: bool = False
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.nowrap
  def _norm(self, name):
    return nn.LayerNorm(self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=name)

  @nn.nowrap
  def _mlp(self):
    return Mlp(self.mlp_dim, activation=self.activation, dropout_rate=self.dropout_rate,
               kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
               name="mlp")

  @nn.nowrap
  def _attention(self, name, fused_qkv=False, decode=False):
    return MultiHeadAttention(self.num_heads, fused_qkv=fused_qkv,
                              dropout_rate=self.attention_dropout_rate,
                              kernel_init=self.kernel_init, dtype=self.dtype,
                              param_dtype=self.param_dtype, decode=decode, name=name)

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, train: bool = False,
               return_weights: bool = False):
    """Runs the block.

    Args:
      x: [B, T, D].
      mask: boolean, True = may attend, broadcastable to [B, H, T, T].
      train: enables dropout (needs a "dropout" rng).
      return_weights: also return the attention weights.

    Returns:
      [B, T, D], or ([B, T, D], weights [B, H, T, T]).
    """
    attn, mlp = self._attention("attn", self.fused_qkv), self._mlp()
    norm1, norm2 = self._norm("norm1"), self._norm("norm2")
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    y = norm1(x) if self.norm_first else x
    y, weights = attn(y, mask=mask, train=train, return_weights=True) if return_weights else (
        attn(y, mask=mask, train=train), None)
    if self.norm_first:
      x = x + drop(y)
      x = x + mlp(norm2(x), train)
    else:
      x = norm1(x + drop(y))
      x = norm2(x + mlp(x, train))
    return (x, weights) if return_weights else x


class TransformerDecoderBlock(TransformerEncoderBlock):
  """Causal self-attention, cross-attention to the encoder's memory, MLP.

  Submodules: `norm1`, `self_attn`, `norm2`, `cross_attn`, `norm3`, `mlp`. Same fields as
  `TransformerEncoderBlock` (`fused_qkv` applies to the self-attention), plus `decode`.

  Self-attention is always causal; `self_mask` (e.g. target padding) is combined with the
  causal mask. With `decode=True` both attentions use the "cache" collection (see
  `cnnrnn.nn.attention`): the first call sizes it, later calls process the next tokens.
  """

  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, memory: Array, self_mask: Array | None = None,
               cross_mask: Array | None = None, train: bool = False,
               return_weights: bool = False, *, decode: bool | None = None):
    """Runs the block.

    Args:
      x: [B, T, D] target-side inputs.
      memory: [B, S, Dm] encoder outputs.
      self_mask: boolean, broadcastable to [B, H, T, T] (decode: [B, H, T, L_cache]), or None.
      cross_mask: boolean, broadcastable to [B, H, T, S] (e.g. source padding), or None.
      train: enables dropout (needs a "dropout" rng).
      return_weights: also return the attention weights.
      decode: overrides the `decode` attribute for this call.

    Returns:
      [B, T, D], or ([B, T, D], {"self": [B, H, T, T], "cross": [B, H, T, S]}).
    """
    decode = self.decode if decode is None else decode
    if not decode:
      causal = nn.make_causal_mask(jnp.ones(x.shape[:2], bool))  # [B, 1, T, T]
      self_mask = causal if self_mask is None else jnp.logical_and(
          causal, jnp.asarray(self_mask, bool).reshape(
              (1,) * (4 - jnp.ndim(self_mask)) + jnp.shape(self_mask)))
    self_attn = self._attention("self_attn", self.fused_qkv, decode)
    cross_attn = self._attention("cross_attn", False, decode)
    norms = [self._norm(f"norm{i}") for i in (1, 2, 3)]
    mlp = self._mlp()
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    weights = {}

    def attention_branch(kind, attn, mask, kv, norm, y):
      z = norm(y) if self.norm_first else y
      if return_weights:
        z, weights[kind] = attn(z, kv, mask, train, True)
      else:
        z = attn(z, kv, mask, train)
      return y + drop(z) if self.norm_first else norm(y + drop(z))

    x = attention_branch("self", self_attn, self_mask, None, norms[0], x)
    x = attention_branch("cross", cross_attn, cross_mask, memory, norms[1], x)
    if self.norm_first:
      x = x + mlp(norms[2](x), train)
    else:
      x = norms[2](x + mlp(x, train))
    return (x, weights) if return_weights else x


class TransformerEncoder(nn.Module):
  """A stack of `TransformerEncoderBlock`s (`layer{i}`) and an optional final `norm`.

  Attributes:
    num_layers: number of blocks.
    block: keyword arguments of every `TransformerEncoderBlock`.
    final_norm: a LayerNorm after the stack (torch's `nn.Transformer` always has one; pre-LN
      models need it).
  """

  num_layers: int
  block: dict
  final_norm: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, train: bool = False) -> Array:
    """[B, S, D] -> [B, S, D]; mask broadcastable to [B, H, S, S]."""
    for i in range(self.num_layers):
      x = TransformerEncoderBlock(**self.block, name=f"layer{i}")(x, mask, train)
    if self.final_norm:
      x = nn.LayerNorm(self.block.get("layer_norm_epsilon", 1e-5),
                       dtype=self.block.get("dtype"),
                       param_dtype=self.block.get("param_dtype", jnp.float32), name="norm")(x)
    return x


class TransformerDecoder(nn.Module):
  """A stack of `TransformerDecoderBlock`s (`layer{i}`) and an optional final `norm`.

  Attributes:
    num_layers: number of blocks.
    block: keyword arguments of every `TransformerDecoderBlock`.
    final_norm: a LayerNorm after the stack.
  """

  num_layers: int
  block: dict
  final_norm: bool = True

  @nn.compact
  def __call__(self, x: Array, memory: Array, self_mask: Array | None = None,
               cross_mask: Array | None = None, train: bool = False,
               return_weights: bool = False, *, decode: bool | None = None):
    """[B, T, D] and memory [B, S, Dm] -> [B, T, D] (and the per-layer weights).

    With `return_weights` the second output is a list over layers of the blocks' weights.
    """
    all_weights = []
    for i in range(self.num_layers):
      out = TransformerDecoderBlock(**self.block, name=f"layer{i}")(
          x, memory, self_mask, cross_mask, train, return_weights, decode=decode)
      x, w = out if return_weights else (out, None)
      all_weights.append(w)
    if self.final_norm:
      x = nn.LayerNorm(self.block.get("layer_norm_epsilon", 1e-5),
                       dtype=self.block.get("dtype"),
                       param_dtype=self.block.get("param_dtype", jnp.float32), name="norm")(x)
    return (x, all_weights) if return_weights else x
