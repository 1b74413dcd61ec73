"""The Transformer encoder-decoder (Vaswani et al. 2017, "Attention is all you need").

Embeddings scaled by sqrt(D) plus sinusoidal (or learned) positions, dropout on their sum;
N encoder and N decoder blocks (post-LN as in the paper, or pre-LN); an output projection to
the target vocabulary, optionally tied to the target embedding, and source/target embeddings
optionally shared (one joint vocabulary), as in the paper's base and big models.

Variants are data (`VARIANTS`), chosen with `transformer(variant=...)` (registry name
`transformer`) and overridable field by field:
  base      6+6 layers, D 512, 8 heads, FFN 2048, dropout 0.1 (the paper's base model)
  big       6+6 layers, D 1024, 16 heads, FFN 4096, dropout 0.3 (the paper's big model, EN-DE)
  small     3+3 layers, D 256, 8 heads, FFN 512, dropout 0.1 on residuals and attention
            weights, learned positions, Glorot-uniform init (bentrevett/pytorch-seq2seq's
            Multi30k model)
  tiny      4+4 layers, D 128, 4 heads, FFN 256, dropout 0.3 (fairseq `transformer_tiny`)

Token ids: pad 0, unk 1, bos 2, eos 3 (the SentencePiece ids of cnnrnn's translation data).
Masking: source positions are valid where `src != pad_id`, or `< src_lengths` when lengths
are given; decoder self-attention is causal, which already hides right-padding of the
target from every real position (padded target positions produce logits the loss ignores).

Decoding protocol (`cnnrnn.decode`): `encode`, `init_cache`, `decode_step`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnrnn.decode import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # pylint: disable=unused-import
from cnnrnn.models.variants import variant_constructor
from cnnrnn.nn.transformer import PositionalEncoding, TransformerDecoder, TransformerEncoder

Array = jax.Array

VARIANTS: dict[str, dict[str, Any]] = {
    "base": dict(num_layers=6, d_model=512, num_heads=8, mlp_dim=2048, dropout_rate=0.1),
    "big": dict(num_layers=6, d_model=1024, num_heads=16, mlp_dim=4096, dropout_rate=0.3),
    "small": dict(num_layers=3, d_model=256, num_heads=8, mlp_dim=512, dropout_rate=0.1,
                  attention_dropout_rate=0.1, positions="learned",
                  init_scheme="xavier_uniform"),
    "tiny": dict(num_layers=4, d_model=128, num_heads=4, mlp_dim=256, dropout_rate=0.3),
}

# Initializers per scheme, as functions of D: token `embedding`, learned `position` table,
# projection `kernel` (attention, FFN, output head). See `Transformer.init_scheme`.
INIT_SCHEMES = {
    "default": lambda d: dict(embedding=nn.initializers.normal(d ** -0.5),
                              position=nn.initializers.normal(0.02),
                              kernel=nn.initializers.lecun_normal()),
    "xavier_uniform": lambda d: dict(embedding=nn.initializers.xavier_uniform(),
                                     position=nn.initializers.xavier_uniform(),
                                     kernel=nn.initializers.xavier_uniform()),
}


class Transformer(nn.Module):
  """Encoder-decoder Transformer over token ids.

  Parameters: `src_embed/embedding` [V_src, D] and `tgt_embed/embedding` [V_tgt, D] (one
  `embed/embedding` when `share_embeddings`), `src_pos/embedding`, `tgt_pos/embedding`
  ([max_len, D], learned positions only), `encoder/layer{i}/...`, `encoder/norm`,
  `decoder/layer{i}/...`, `decoder/norm` (see `cnnrnn.nn.transformer`), `head/kernel`
  [D, V_tgt] and `head/bias` [V_tgt] (with `tie_output`: `head_bias` only, the output
  projection is the target embedding transposed).

  Attributes:
    vocab_size: V_src (and V_tgt unless `tgt_vocab_size`).
    tgt_vocab_size: V_tgt (default: vocab_size).
    num_layers: encoder blocks.
    num_decoder_layers: decoder blocks (default: num_layers).
    d_model: D.
    num_heads: attention heads.
    mlp_dim: feed-forward width.
    dropout_rate: on embeddings + positions and on every residual branch (and in the FFN).
    attention_dropout_rate: on the attention weights (the paper: 0; tensor2tensor 0.1).
    activation: FFN activation ("relu", "gelu", "gelu_tanh").
    norm_first: pre-LN; False (default) is the paper's post-LN.
    final_norm: a LayerNorm after each stack; None: only for pre-LN, where the last residual
      sum is otherwise unnormalised (torch's `nn.Transformer` always has one: set True).
    positions: "sinusoidal" or "learned".
    max_len: longest source/target sequence.
    share_embeddings: one embedding matrix for source and target (joint vocabulary).
    tie_output: the output projection is the target embedding transposed (Press & Wolf).
    scale_embeddings: multiply embeddings by sqrt(D) (the paper).
    layer_norm_epsilon: LayerNorm epsilon.
    init_scheme: how the matrices are initialised (`INIT_SCHEMES`); biases start at zero
      and LayerNorms at (1, 0) in every scheme.
      "default": token embeddings normal(D^-1/2), so that with the sqrt(D) scale embedded
      tokens have unit variance (fairseq, tensor2tensor); learned positions normal(0.02)
      (BERT, ViT); projections LeCun normal (Flax's default).
      "xavier_uniform": Glorot uniform on every matrix, the embeddings and the learned
      position table included (pytorch-seq2seq's Transformer tutorial; torch keeps its
      uniform bias init there, here biases are zero). The tokens then start with a
      standard deviation of about sqrt(2D / (V + D)) after the sqrt(D) scale and the
      positions about sqrt(2 / (max_len + D)): positions matter from the first step,
      where "default" starts them 50x weaker than the tokens.
    fused_qkv: fused q/k/v projection in the self-attentions.
    pad_id: the padding token id.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  vocab_size: int
  tgt_vocab_size: int | None = None
  num_layers: int = 6
  num_decoder_layers: int | None = None
  d_model: int = 512
  num_heads: int = 8
  mlp_dim: int = 2048
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  activation: str = "relu"
  norm_first: bool = False
  final_norm: bool | None = None
  positions: str = "sinusoidal"
  max_len: int = 256
  share_embeddings: bool = False
  tie_output: bool = False
  scale_embeddings: bool = True
  layer_norm_epsilon: float = 1e-5
  init_scheme: str = "default"
  fused_qkv: bool = False
  pad_id: int = PAD_ID
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    tgt_vocab = self.tgt_vocab_size or self.vocab_size
    if self.share_embeddings and tgt_vocab != self.vocab_size:
      raise ValueError(f"share_embeddings needs one vocabulary, got vocab_size="
                       f"{self.vocab_size} and tgt_vocab_size={tgt_vocab}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
    if self.init_scheme not in INIT_SCHEMES:
      raise ValueError(f"init_scheme={self.init_scheme!r}; allowed: {', '.join(INIT_SCHEMES)}")
    init = INIT_SCHEMES[self.init_scheme](self.d_model)
    embed = functools.partial(nn.Embed, features=self.d_model, embedding_init=init["embedding"],
                              dtype=self.dtype, param_dtype=self.param_dtype)
    if self.share_embeddings:
      self.src_embed = self.tgt_embed = embed(self.vocab_size, name="embed")
    else:
      self.src_embed = embed(self.vocab_size)
      self.tgt_embed = embed(tgt_vocab)
    pos = functools.partial(PositionalEncoding, self.positions, self.max_len,
                            embedding_init=init["position"], param_dtype=self.param_dtype)
    self.src_pos, self.tgt_pos = pos(), pos()
    block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                 attention_dropout_rate=self.attention_dropout_rate,
                 norm_first=self.norm_first, activation=self.activation,
                 layer_norm_epsilon=self.layer_norm_epsilon, fused_qkv=self.fused_qkv,
                 kernel_init=init["kernel"], dtype=self.dtype, param_dtype=self.param_dtype)
    final_norm = self.norm_first if self.final_norm is None else self.final_norm
    self.encoder = TransformerEncoder(self.num_layers, block, final_norm)
    self.decoder = TransformerDecoder(self.num_decoder_layers or self.num_layers, block,
                                      final_norm)
    self.dropout = nn.Dropout(self.dropout_rate)
    if self.tie_output:
      self.head_bias = self.param("head_bias", nn.initializers.zeros_init(), (tgt_vocab,),
                                  self.param_dtype)
    else:
      self.head = nn.Dense(tgt_vocab, kernel_init=init["kernel"], dtype=self.dtype,
                           param_dtype=self.param_dtype)

  def _embed(self, embed, pos, tokens, train, decode=False):
    x = embed(tokens)  # [B, T, D]
    if self.scale_embeddings:
      x = x * jnp.asarray(self.d_model ** 0.5, x.dtype)
    return self.dropout(pos(x, decode=decode), deterministic=not train)

  def _logits(self, y):
    if self.tie_output:
      logits = self.tgt_embed.attend(y)  # [..., V]
      return logits + self.head_bias.astype(logits.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
    return self.head(y)

  def source_mask(self, src: Array, src_lengths: Array | None = None) -> Array:
    """[B, S] bool, True at real (non-padding) source positions."""
    if src_lengths is None:
      return src != self.pad_id
    return jnp.arange(src.shape[1])[None, :] < jnp.asarray(src_lengths)[:, None]

  def encode(self, src: Array, src_lengths: Array | None = None, train: bool = False):
    """Encodes the source.

    Args:
      src: [B, S] token ids.
      src_lengths: [B] valid lengths, or None to mask `pad_id` tokens.
      train: enables dropout.

    Returns:
      {"memory": [B, S, D], "mask": [B, S] bool}: the `encoded` pytree of the decoding
      protocol.
    """
    mask = self.source_mask(src, src_lengths)
    x = self._embed(self.src_embed, self.src_pos, src, train)
    attn_mask = nn.make_attention_mask(mask, mask)  # [B, 1, S, S]
    return {"memory": self.encoder(x, attn_mask, train), "mask": mask}

  def decode(self, encoded, tgt_in: Array, train: bool = False, return_weights: bool = False):
    """Teacher-forced decoder: [B, T] target inputs (BOS first) -> logits [B, T, V_tgt].

    With `return_weights` also returns the per-layer attention weights (cross-attention
    maps: `weights[layer]["cross"]` [B, H, T, S]).
    """
    y = self._embed(self.tgt_embed, self.tgt_pos, tgt_in, train)
    cross = encoded["mask"][:, None, None, :]  # [B, 1, 1, S]
    out = self.decoder(y, encoded["memory"], None, cross, train, return_weights)
    if return_weights:
      return self._logits(out[0]), out[1]
    return self._logits(out)

  def __call__(self, src: Array, tgt_in: Array, train: bool = False, *,
               src_lengths: Array | None = None) -> Array:
    """Teacher-forced forward pass.

    Args:
      src: [B, S] source token ids.
      tgt_in: [B, T] target inputs (BOS then the target shifted right).
      src_lengths: [B] valid source lengths, or None to mask `pad_id` tokens.
      train: enables dropout (needs a "dropout" rng).

    Returns:
      logits [B, T, V_tgt].
    """
    return self.decode(self.encode(src, src_lengths, train), tgt_in, train)

  def init_cache(self, encoded, max_len: int) -> None:
    """Creates the "cache" collection for decoding up to `max_len` tokens (call with
    `mutable=["cache"]`): zero key/value buffers [B, max_len, H, Dh] per self-attention,
    the projected memory per cross-attention, position counters at 0."""
    batch = encoded["memory"].shape[0]
    dummy = jnp.zeros((batch, max_len), jnp.int32)
    y = self._embed(self.tgt_embed, self.tgt_pos, dummy, False, decode=True)
    self.decoder(y, encoded["memory"], None, encoded["mask"][:, None, None, :], decode=True)

  def decode_step(self, encoded, tokens: Array) -> Array:
    """One decoding step from the "cache" collection (call with `mutable=["cache"]`).

    Args:
      encoded: `encode`'s output (rows may be tiled/reordered, e.g. per beam).
      tokens: [N] the previous tokens (BOS at the first step).

    Returns:
      logits [N, V_tgt] for the next token.
    """
    y = self._embed(self.tgt_embed, self.tgt_pos, tokens[:, None], False, decode=True)
    y = self.decoder(y, encoded["memory"], None, encoded["mask"][:, None, None, :], decode=True)
    return self._logits(y)[:, 0]


transformer = variant_constructor(Transformer, VARIANTS, "transformer")
