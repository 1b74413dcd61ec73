"""Attention layers: multi-head scaled dot-product (Vaswani et al. 2017), additive (Bahdanau
et al. 2015) and multiplicative (Luong et al. 2015).

Masks are boolean, True = may attend. Build them with Flax's `make_attention_mask(q_valid,
k_valid)` and `make_causal_mask(tokens)` (re-exported here). A query whose mask row is all
False gets zero weights and a zero output, never NaN (a softmax over nothing is undefined;
zeros keep padded queries harmless under any reduction).

`MultiHeadAttention` keeps Flax's `nn.MultiHeadDotProductAttention` parameter layout, so
checkpoints map 1:1. By default it computes attention itself, head-major: q, k and v go to
[B, H, T, Dh] once and both batched products run over contiguous [T, Dh] blocks (in decode
mode the cached keys and values stay in Flax's [B, L, H, Dh] and are read in place, not
transposed at every step). `jax.nn.dot_product_attention` is what `implementation="xla"`
or `"cudnn"` selects (its `None` is its XLA path too, written token-major [B, T, H, Dh]);
use "cudnn" on NVIDIA GPUs for cuDNN's fused attention: it is taken where cuDNN can compute
the call (no weights requested, no dropout on them, float16/bfloat16 compute, a head size
that is a multiple of 8 up to 128) and the call goes to XLA's implementation otherwise.
On the CPU the head-major form is the faster one: the attention of one ViT block (B 128,
65 tokens, 4 heads of 32) took 18.6 ms forward and backward against 36.8 ms through
`jax.nn.dot_product_attention` (2 threads, this project's development machine). Whole
training steps gained less: see experiments/benchmarks/README.md.

Incremental decoding follows Flax's convention: with `decode=True` the layer keeps its
projected keys and values in the "cache" collection (`cached_key`, `cached_value` [B, L,
H, Dh], `cache_index` []). The first call, with the collection mutable, sizes the cache
from its input (pass a dummy [B, L_max, D] sequence); each later call appends its queries'
keys and values at `cache_index` and attends to everything cached so far, so one token
costs O(L) instead of recomputing the whole prefix. Cross-attention (`inputs_kv` given)
caches the projected memory on the first call and reuses it afterwards, and so do
`AdditiveAttention` and `LuongAttention(score="concat")` with `decode=True` for their key
projection.
"""

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
from flax.linen import make_attention_mask, make_causal_mask  # noqa: F401  (re-exported)
import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]


def _mask4(mask: Array | None) -> Array | None:
  """A boolean mask with leading singleton axes added up to rank 4 ([B, H, Tq, Tk])."""
  if mask is None:
    return None
  mask = jnp.asarray(mask, bool)
  if mask.ndim > 4:
    raise ValueError(f"attention mask must broadcast to [B, H, Tq, Tk], got shape {mask.shape}")
  return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def masked_softmax(logits: Array, mask: Array | None, axis: int = -1) -> Array:
  """Softmax over `axis` that gives exactly 0 where `mask` is False (all-False rows: zeros).

  Computed in float32 at least, returned in `logits.dtype`. Its derivative is the softmax's
  own, y * (dx - sum(y * dx)), a `jax.custom_jvp` rule: reverse mode keeps only y, where
  differentiating exp(x) / sum(exp(x)) quotient by quotient (what `jax.nn.softmax` does while
  its `jax_softmax_custom_jvp` flag is off) keeps the broadcast 1 / sum as well and costs
  extra passes over [B, H, Tq, Tk]. The rule is written in differentiable operations, so
  higher derivatives work as usual.

  Args:
    logits: [..., Tk] scores.
    mask: boolean of the same rank, broadcastable to `logits`; None: no masking.
  """
  dtype = logits.dtype
  x = logits.astype(jnp.promote_types(dtype, jnp.float32))
  mask = jnp.ones((1,) * x.ndim, bool) if mask is None else jnp.asarray(mask, bool)
  return _softmax_where(x, mask, axis % x.ndim).astype(dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _softmax_where(x: Array, mask: Array, axis: int) -> Array:
  x = jnp.where(mask, x, jnp.finfo(x.dtype).min)
  e = jnp.exp(x - lax.stop_gradient(jnp.max(x, axis, keepdims=True)))
  return jnp.where(mask, e / jnp.sum(e, axis, keepdims=True), 0)


@_softmax_where.defjvp
def _softmax_where_jvp(axis, primals, tangents):
  x, mask = primals
  dx, _ = tangents
  y = _softmax_where(x, mask, axis)
  return y, y * (dx - jnp.sum(y * dx, axis, keepdims=True))


IMPLEMENTATIONS = (None, "xla", "cudnn")


class MultiHeadAttention(nn.Module):
  """Multi-head scaled dot-product attention with separate or fused q/k/v projections.

  Parameters (Flax's `nn.MultiHeadDotProductAttention` layout): separate projections
  `query`, `key`, `value` with `kernel` [D, H, Dh] and `bias` [H, Dh]; fused (`fused_qkv`,
  self-attention only) `qkv/kernel` [D, 3, H, Dh] and `qkv/bias` [3, H, Dh] in q, k, v
  order; output `out/kernel` [H, Dh, out] and `out/bias` [out]. Scores are scaled by
  Dh ** -0.5.

  Example (causal self-attention):

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn.nn import MultiHeadAttention, make_causal_mask
    >>> attention = MultiHeadAttention(num_heads=2)
    >>> x = jnp.ones((3, 5, 8))  # [B, T, D]
    >>> mask = make_causal_mask(jnp.ones((3, 5)))  # [B, 1, T, T]
    >>> variables = attention.init(jax.random.key(0), x, mask=mask)
    >>> attention.apply(variables, x, mask=mask).shape
    (3, 5, 8)

  Attributes:
    num_heads: H.
    qkv_features: H * Dh (default: the query's D); must be divisible by H.
    out_features: output width (default: the query's D).
    fused_qkv: one `qkv` projection instead of three (self-attention only).
    use_bias: biases on the projections.
    dropout_rate: dropout on the attention weights (training only).
    kernel_init: projection kernel initializer (Flax's default, LeCun normal).
    bias_init: bias initializer.
    dtype: compute dtype (None: inferred from inputs and parameters).
    param_dtype: parameter dtype.
    implementation: None: the head-major attention written here (see the module docstring);
      "xla" or "cudnn": `jax.nn.dot_product_attention` with that implementation, where it
      can express the call (no weights returned, no dropout on them); "cudnn" becomes "xla"
      where cuDNN cannot run it (float32 compute, a head size not a multiple of 8 or above
      128).
    decode: incremental decoding with a key/value cache (see the module docstring).
    qk_attn_weights_einsum_cls: factory of the einsum that computes the scores q k^T
      (called with subscripts and two operands; default `jnp.einsum`), as Flax's
      `nn.MultiHeadDotProductAttention`'s field of the same name. `cnnrnn.accel` sets it.
    attn_weights_value_einsum_cls: factory of the einsum that computes the weighted sum
      of the values (default `jnp.einsum`), as Flax's field of the same name.
  """

  num_heads: int
  qkv_features: int | None = None
  out_features: int | None = None
  fused_qkv: bool = False
  use_bias: bool = True
  dropout_rate: float = 0.0
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  implementation: str | None = None
  decode: bool = False
  qk_attn_weights_einsum_cls: Callable[[], Callable[..., Array]] | None = None
  attn_weights_value_einsum_cls: Callable[[], Callable[..., Array]] | None = None

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array | None = None, mask: Array | None = None,
               train: bool = False, return_weights: bool = False, *,
               decode: bool | None = None):
    """Attends from `inputs_q` to `inputs_kv` (itself when None).

    Args:
      inputs_q: [B, Tq, D] queries.
      inputs_kv: [B, Tk, Dkv] keys/values source; None for self-attention.
      mask: boolean, True = may attend, broadcastable to [B, H, Tq, Tk] (lower ranks get
        leading singleton axes). In decode mode Tk is the cache length and the cache's own
        causal mask is combined with it.
      train: enables dropout on the attention weights (needs a "dropout" rng).
      return_weights: also return the attention weights.
      decode: overrides the `decode` attribute for this call.

    Returns:
      [B, Tq, out], or ([B, Tq, out], weights [B, H, Tq, Tk]) with `return_weights`.

    Raises:
      ValueError: qkv_features not divisible by num_heads, fused_qkv with inputs_kv, a mask
        of rank above 4, or an unknown implementation.
    """
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"MultiHeadAttention.implementation={self.implementation!r}; allowed: "
                       f"{', '.join(map(repr, IMPLEMENTATIONS))}")
    decode = self.decode if decode is None else decode
    features = inputs_q.shape[-1]
    qkv_features = self.qkv_features or features
    if qkv_features % self.num_heads:
      raise ValueError(f"qkv_features={qkv_features} must be divisible by num_heads="
                       f"{self.num_heads}")
    head_dim = qkv_features // self.num_heads
    dense = functools.partial(nn.DenseGeneral, axis=-1, use_bias=self.use_bias,
                              kernel_init=self.kernel_init, bias_init=self.bias_init,
                              dtype=self.dtype, param_dtype=self.param_dtype)
    heads = (self.num_heads, head_dim)
    self_attention = inputs_kv is None
    mask = _mask4(mask)

    if self.fused_qkv:
      if not self_attention:
        raise ValueError("fused_qkv=True projects q, k and v from one input: self-attention "
                         "only (inputs_kv must be None)")
      qkv = dense(features=(3, *heads), name="qkv")(inputs_q)  # [B, Tq, 3, H, Dh]
      query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      query = dense(features=heads, name="query")(inputs_q)  # [B, Tq, H, Dh]
      if decode and not self_attention and self.has_variable("cache", "cached_key"):
        key = value = None  # Cross-attention: the memory's projections are cached.
      else:
        kv = inputs_q if self_attention else inputs_kv
        key = dense(features=heads, name="key")(kv)  # [B, Tk, H, Dh]
        value = dense(features=heads, name="value")(kv)

    query = jnp.swapaxes(query, 1, 2)  # [B, H, Tq, Dh]
    if decode:  # The cache keeps Flax's [B, L, H, Dh]; read in place, not transposed per step.
      key, value, mask = self._use_cache(key, value, mask, query.shape[2], self_attention)
      kv_layout = "bkhd"
    else:
      key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
      kv_layout = "bhkd"

    out, weights = self._attend(query, key, value, mask, train, return_weights, kv_layout)
    # out [B, H, Tq, Dh]: contract (H, Dh) in place, as `out/kernel` [H, Dh, out] is laid out.
    out = nn.DenseGeneral(features=self.out_features or features, axis=(1, 3),
                          use_bias=self.use_bias, kernel_init=self.kernel_init,
                          bias_init=self.bias_init, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="out")(out)  # [B, Tq, out]
    if mask is not None:
      # A query that may attend to nothing gets zeros (not the output bias, nor NaN).
      any_visible = jnp.any(mask, axis=(1, 3))  # [B|1, Tq|1]: some head sees some key
      out = jnp.where(any_visible[..., None], out, 0)
    return (out, weights) if return_weights else out

  def _use_cache(self, key, value, mask, q_len, self_attention):
    """Reads/updates the "cache" collection; returns the keys, values and mask to use."""
    initialized = self.has_variable("cache", "cached_key")
    if not self_attention:
      if initialized:
        return self.get_variable("cache", "cached_key"), self.get_variable(
            "cache", "cached_value"), mask
      self.variable("cache", "cached_key", lambda: key)
      self.variable("cache", "cached_value", lambda: value)
      return key, value, mask
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialized:  # The sizing call: plain attention over its own input.
      return key, value, mask
    i = index.value
    cached_key.value = lax.dynamic_update_slice(cached_key.value, key.astype(
        cached_key.value.dtype), (0, i, 0, 0))
    cached_value.value = lax.dynamic_update_slice(cached_value.value, value.astype(
        cached_value.value.dtype), (0, i, 0, 0))
    index.value = i + q_len
    max_len = cached_key.value.shape[1]
    # Query t (absolute position i + t) sees cached positions <= i + t: causal, and the
    # not-yet-written tail of the cache is never read.
    visible = jnp.arange(max_len)[None, :] <= (i + jnp.arange(q_len))[:, None]  # [Tq, L]
    visible = visible[None, None]
    mask = visible if mask is None else jnp.logical_and(mask, visible)
    return cached_key.value, cached_value.value, mask

  def _attend(self, query, key, value, mask, train, return_weights, kv_layout):
    """Scaled dot-product attention of head-major [B, H, Tq, Dh] queries over keys and
    values laid out as `kv_layout` ("bhkd" or token-major "bkhd"); [B, H, Tq, Dh] out and
    the weights (or None)."""
    scale = query.shape[-1] ** -0.5
    dropout = train and self.dropout_rate > 0
    if self.implementation is not None and not return_weights and not dropout:
      dtype = jnp.result_type(query, key, value)
      if kv_layout == "bhkd":
        key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
      query, key, value = (x.astype(dtype) for x in (jnp.swapaxes(query, 1, 2), key, value))
      implementation = self.implementation
      head_dim = query.shape[-1]
      if implementation == "cudnn" and (dtype not in (jnp.bfloat16, jnp.float16)
                                        or head_dim % 8 or head_dim > 128):
        implementation = "xla"  # What cuDNN's fused attention cannot compute.
      out = jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale,
                                         implementation=implementation)
      if mask is not None:
        # dot_product_attention averages the values of an all-masked (head, row); zero it,
        # as the written-out path does.
        any_visible = jnp.any(mask, axis=-1)  # [B|1, H|1, Tq|1]
        out = jnp.where(jnp.swapaxes(any_visible, 1, 2)[..., None], out, 0)
      return jnp.swapaxes(out, 1, 2), None
    qk_einsum = (self.qk_attn_weights_einsum_cls() if self.qk_attn_weights_einsum_cls
                 else jnp.einsum)
    value_einsum = (self.attn_weights_value_einsum_cls() if self.attn_weights_value_einsum_cls
                    else jnp.einsum)
    logits = qk_einsum(f"bhqd,{kv_layout}->bhqk", query * jnp.asarray(scale, query.dtype), key)
    weights = masked_softmax(logits, mask)  # [B, H, Tq, Tk]
    if dropout:
      weights = nn.Dropout(self.dropout_rate, deterministic=False)(weights)
    out = value_einsum(f"bhqk,{kv_layout}->bhqd", weights.astype(value.dtype), value)
    return out, (weights if return_weights else None)


def _vector_query(query: Array, mask: Array | None):
  """[B, Dq] -> [B, 1, Dq]; a [B, Tk] mask -> [B, 1, Tk]; whether to squeeze back."""
  squeeze = query.ndim == 2
  if squeeze:
    query = query[:, None]
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    if mask.ndim == 2:
      mask = mask[:, None]
    mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)
  return query, mask, squeeze


def _project_keys(module: nn.Module, dense: nn.Module, keys: Array, decode: bool) -> Array:
  """dense(keys), kept in the "cache" collection (`projected_keys`) in decode mode.

  A decoder attends to the same encoder outputs at every step; in decode mode the first
  call (with "cache" mutable) projects them once and later calls reuse the projection.
  """
  if not decode:
    return dense(keys)
  if module.has_variable("cache", "projected_keys"):
    return module.get_variable("cache", "projected_keys")
  return module.variable("cache", "projected_keys", lambda: dense(keys)).value


def _finish(scores, values, mask, squeeze):
  weights = masked_softmax(scores, mask)  # [B, Tq, Tk]
  context = jnp.einsum("bqk,bkd->bqd", weights.astype(values.dtype), values)
  if squeeze:
    return context[:, 0], weights[:, 0]
  return context, weights


class AdditiveAttention(nn.Module):
  """Bahdanau et al. 2015 attention: score(q, k) = v^T tanh(W q + U k + b).

  Parameters: `query/kernel` [Dq, A] (no bias), `key/kernel` [Dk, A] and `key/bias` [A],
  `energy/kernel` [A, 1]. (pytorch-seq2seq's `Linear(Dk + Dq, A)` on the concatenation is
  the same map with W, U stacked.)

  Attributes:
    features: A, the attention MLP width (default: Dk).
    use_bias: the bias b.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    decode: keep U k + b in the "cache" collection after the first call (`projected_keys`
      [B, Tk, A]), for step-by-step decoding over fixed encoder outputs.
  """

  features: int | None = None
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  decode: bool = False

  @nn.compact
  def __call__(self, query: Array, keys: Array, values: Array | None = None,
               mask: Array | None = None):
    """Attends from `query` over `keys`.

    Args:
      query: [B, Dq] (one decoder state) or [B, Tq, Dq].
      keys: [B, Tk, Dk] (e.g. encoder outputs).
      values: [B, Tk, Dv] (default: keys).
      mask: boolean, True = may attend: [B, Tk], or broadcastable to [B, Tq, Tk].

    Returns:
      (context [B, Dv] or [B, Tq, Dv], weights [B, Tk] or [B, Tq, Tk]).
    """
    values = keys if values is None else values
    query, mask, squeeze = _vector_query(query, mask)
    units = self.features or keys.shape[-1]
    dense = functools.partial(nn.Dense, units, dtype=self.dtype, param_dtype=self.param_dtype)
    q = dense(use_bias=False, name="query")(query)  # [B, Tq, A]
    k = _project_keys(self, dense(use_bias=self.use_bias, name="key"), keys,
                      self.decode)  # [B, Tk, A]
    hidden = jnp.tanh(q[:, :, None, :] + k[:, None, :, :])  # [B, Tq, Tk, A]
    scores = nn.Dense(1, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="energy")(hidden)[..., 0]  # [B, Tq, Tk]
    return _finish(scores, values, mask, squeeze)


LUONG_SCORES = ("dot", "general", "concat")


class LuongAttention(nn.Module):
  """Luong, Pham & Manning 2015 global attention scores.

  `dot`: q . k (needs Dq == Dk, no parameters); `general`: q^T W_a k, parameter
  `query/kernel` [Dq, Dk] (W_a, applied to the query); `concat`: v_a^T tanh(W_a [q; k]),
  parameters `query/kernel` [Dq, A], `key/kernel` [Dk, A] (W_a split by its input halves)
  and `energy/kernel` [A, 1]; no biases, as in the paper. The attentional state
  tanh(W_c [c; h]) and input feeding belong to the decoder, not to this layer.

  Attributes:
    score: "dot", "general" or "concat".
    features: A for "concat" (default: Dk).
    dtype: compute dtype.
    param_dtype: parameter dtype.
    decode: "concat" keeps its key projection in the "cache" collection after the first
      call, as `AdditiveAttention` does.
  """

  score: str = "general"
  features: int | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  decode: bool = False

  @nn.compact
  def __call__(self, query: Array, keys: Array, values: Array | None = None,
               mask: Array | None = None):
    """Attends from `query` over `keys`; arguments and returns as `AdditiveAttention`.

    Raises:
      ValueError: unknown score, or "dot" with Dq != Dk.
    """
    if self.score not in LUONG_SCORES:
      raise ValueError(f"LuongAttention.score={self.score!r}; allowed: {', '.join(LUONG_SCORES)}")
    values = keys if values is None else values
    query, mask, squeeze = _vector_query(query, mask)
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    if self.score == "dot":
      if query.shape[-1] != keys.shape[-1]:
        raise ValueError(f"LuongAttention score='dot' needs query and key widths equal, got "
                         f"{query.shape[-1]} and {keys.shape[-1]}")
      scores = jnp.einsum("bqd,bkd->bqk", query, keys)
    elif self.score == "general":
      q = dense(keys.shape[-1], name="query")(query)  # [B, Tq, Dk]
      scores = jnp.einsum("bqd,bkd->bqk", q, keys)
    else:
      units = self.features or keys.shape[-1]
      q = dense(units, name="query")(query)  # [B, Tq, A]
      k = _project_keys(self, dense(units, name="key"), keys, self.decode)  # [B, Tk, A]
      hidden = jnp.tanh(q[:, :, None, :] + k[:, None, :, :])  # [B, Tq, Tk, A]
      scores = dense(1, name="energy")(hidden)[..., 0]
    return _finish(scores, values, mask, squeeze)
