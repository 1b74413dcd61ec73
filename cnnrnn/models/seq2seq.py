"""Recurrent encoder-decoder (seq2seq) with a choice of attention.

The encoder embeds the source, masks its padding through `seq_lengths` (from `src_lengths`,
or counted as the tokens that are not `pad_id`; padding is at the end of each row) and runs
the project's `StackedRNN` (LSTM or GRU, uni- or bidirectional, stacked, dropout between
layers). `reverse_source` reverses each source row within its length before encoding
(Sutskever et al. 2014); the encoder outputs are put back in source order, so attention
weights always index source positions as written.

The decoder is one cell, `DecoderCell`, `cell(carry, y_t, static) -> (carry, (features_t,
weights_t))`: run by `flax.linen.scan` over the teacher-forced inputs in training, called
one step at a time by `decode_step`. `attention` chooses what it reads from the encoder:

  none      the final encoder state initialises the decoder, nothing else (Sutskever et
            al. 2014; pytorch-seq2seq tutorial 1).
  context   the same, plus the context vector (the top layer's final state) fed to the RNN
            at every step and to the output layer with the embedding (Cho et al. 2014;
            tutorial 2): logits = W [y_t; h_t; c].
  bahdanau  additive attention from the previous top decoder state over the encoder
            outputs; the context goes into the RNN and, with h_t and y_t, into the output
            layer (Bahdanau et al. 2015; tutorials 3/4).
  luong     global attention from the new top state h_t (score dot / general / concat),
            attentional state h~_t = tanh(W_c [c_t; h_t]) -> logits, and input feeding:
            h~_{t-1} joins the next step's input (Luong et al. 2015).

Initial decoder state: the encoder's final carry layer by layer when the encoder is
unidirectional with the decoder's width; otherwise (bidirectional, as in tutorial 3, or other
widths) each layer's carry is tanh(W [forward; backward] + b), one `bridge` Dense per layer and
carry part (an LSTM's c and h).

Variants are data (`VARIANTS`), chosen with `seq2seq(variant=...)` (registry name `seq2seq`)
and overridable field by field:

  ptseq2seq_lstm         tutorial 1: 2-layer LSTM, embedding 256, hidden 512, dropout 0.5
  ptseq2seq_gru_context  tutorial 2: 1-layer GRU, context at every step, same sizes
  ptseq2seq_bahdanau     tutorial 3/4: BiGRU encoder 512, GRU decoder 512, Bahdanau
                         attention (width 512), embedding 256, dropout 0.5
  luong                  Luong et al. 2015's global attention (general score, input feeding)
                         on a 2-layer LSTM, source reversed; sizes and dropout as tutorial 1
  sutskever              Sutskever et al. 2014: 4-layer LSTM, 1000 units, embedding 1000,
                         source reversed, no dropout

Token ids: pad 0, bos 2, eos 3 (cnnrnn's translation vocabularies). Decoding protocol
(`cnnrnn.decode`): `encode`, `init_cache` (the decoder carry in the "cache" collection),
`decode_step`.
"""

import functools
from typing import Any

import flax.linen as nn
from flax.linen import recurrent as flax_recurrent
import jax
import jax.numpy as jnp

from cnnrnn.decode import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # pylint: disable=unused-import
from cnnrnn.models.variants import variant_constructor
from cnnrnn.nn.attention import AdditiveAttention, LUONG_SCORES, LuongAttention
from cnnrnn.nn.cells import CELLS, make_cell
from cnnrnn.nn.rnn import StackedRNN

Array = jax.Array
Carry = Any

ATTENTIONS = ("none", "context", "bahdanau", "luong")

_PTSEQ2SEQ = dict(embed_dim=256, hidden_size=512, dropout_rate=0.5)
VARIANTS: dict[str, dict[str, Any]] = {
    "ptseq2seq_lstm": dict(cell="lstm", num_layers=2, attention="none", **_PTSEQ2SEQ),
    "ptseq2seq_gru_context": dict(cell="gru", num_layers=1, attention="context", **_PTSEQ2SEQ),
    "ptseq2seq_bahdanau": dict(cell="gru", num_layers=1, bidirectional=True,
                               attention="bahdanau", **_PTSEQ2SEQ),
    "luong": dict(cell="lstm", num_layers=2, attention="luong", luong_score="general",
                  input_feeding=True, reverse_source=True, **_PTSEQ2SEQ),
    "sutskever": dict(cell="lstm", num_layers=4, embed_dim=1000, hidden_size=1000,
                      dropout_rate=0.0, attention="none", reverse_source=True),
}


class DecoderCell(nn.Module):
  """One decoder step: embedded token -> stacked RNN (+ attention) -> output features.

  Carry: {"rnn": one cell carry per layer, and "feed": h~_{t-1} [B, H] for Luong attention
  with input feeding}. `static` (the same at every step): {"memory": encoder outputs [B, S,
  Dm], "mask": [B, S] bool, "context": [B, Dc]}, of which each attention reads what it needs.

  Parameters: `layer{i}/...` (the cells), `attention/...` (`AdditiveAttention` or
  `LuongAttention`), `combine/kernel` [Dm + H, H] (Luong's W_c, no bias as in the paper).

  Attributes:
    cell: "lstm", "gru" or "simple".
    hidden_size: H.
    num_layers: stacked layers.
    dropout_rate: dropout between layers (training only).
    attention: one of `ATTENTIONS`.
    luong_score: "dot", "general" or "concat".
    attention_dim: the attention MLP width (additive / concat; default: the memory's).
    input_feeding: Luong's input feeding.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  cell: str
  hidden_size: int
  num_layers: int = 1
  dropout_rate: float = 0.0
  attention: str = "none"
  luong_score: str = "general"
  attention_dim: int | None = None
  input_feeding: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.nowrap
  def make_cell(self, **kwargs):
    dtype = {} if self.dtype is None else {"dtype": self.dtype}
    return make_cell(self.cell, self.hidden_size, param_dtype=self.param_dtype, **dtype,
                     **kwargs)

  @nn.compact
  def __call__(self, carry: Carry, y: Array, static: dict[str, Array], train: bool = False):
    """One step.

    Args:
      carry: {"rnn": per-layer carries, ["feed": [B, H]]}.
      y: [B, E] the embedded previous target token.
      static: {"memory", "mask", "context"} (see the class docstring).
      train: enables dropout (needs a "dropout" rng).

    Returns:
      (carry, (features [B, F] for the output layer, attention weights [B, S] or None)).
    """
    cells = [self.make_cell(name=f"layer{i}") for i in range(self.num_layers)]
    rnn_carry, feed = carry["rnn"], carry.get("feed")
    weights = None
    if self.attention == "bahdanau":
      query = cells[-1].hidden_state(rnn_carry[-1])  # [B, H] the previous top state
      context, weights = AdditiveAttention(self.attention_dim, dtype=self.dtype,
                                           param_dtype=self.param_dtype, name="attention")(
                                               query, static["memory"], mask=static["mask"])
      x = jnp.concatenate([y, context.astype(y.dtype)], -1)
    elif self.attention == "context":
      x = jnp.concatenate([y, static["context"].astype(y.dtype)], -1)
    elif self.attention == "luong" and self.input_feeding:
      x = jnp.concatenate([y, feed.astype(y.dtype)], -1)
    else:
      x = y
    new_carry = []
    for i, cell in enumerate(cells):
      if i > 0 and self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      c, x = cell(rnn_carry[i], x)
      new_carry.append(c)
    h = x  # [B, H]
    out_carry = {"rnn": tuple(new_carry)}
    if self.attention == "none":
      features = h
    elif self.attention == "context":
      features = jnp.concatenate([y, h, static["context"].astype(h.dtype)], -1)
    elif self.attention == "bahdanau":
      features = jnp.concatenate([h, context.astype(h.dtype), y], -1)
    else:  # luong
      context, weights = LuongAttention(self.luong_score, self.attention_dim, dtype=self.dtype,
                                        param_dtype=self.param_dtype, name="attention")(
                                            h, static["memory"], mask=static["mask"])
      features = jnp.tanh(nn.Dense(self.hidden_size, use_bias=False, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name="combine")(
                                       jnp.concatenate([context.astype(h.dtype), h], -1)))
      if self.input_feeding:
        out_carry["feed"] = features
    return out_carry, (features, weights)


class Seq2Seq(nn.Module):
  """RNN encoder-decoder over token ids (see the module docstring).

  Parameters: `src_embed/embedding` [V_src, E], `tgt_embed/embedding` [V_tgt, E],
  `encoder/layer{i}/...` (`StackedRNN`), `bridge_{k}` (k = layer * parts + part, only when
  bridging),
  `decoder/...` (`DecoderCell`), `head/kernel` [F, V_tgt] and `head/bias` [V_tgt].

  Attributes:
    vocab_size: V_src (and V_tgt unless `tgt_vocab_size`).
    tgt_vocab_size: V_tgt (default: vocab_size).
    cell: "lstm", "gru" or "simple" (encoder and decoder).
    embed_dim: E.
    hidden_size: the encoder's H (per direction).
    decoder_hidden_size: the decoder's H (default: hidden_size).
    num_layers: layers of the encoder and of the decoder.
    bidirectional: a bidirectional encoder.
    dropout_rate: on the source and target embeddings and between stacked layers.
    reverse_source: reverse each source row within its length (Sutskever et al. 2014).
    attention: "none", "context", "bahdanau" or "luong".
    luong_score: "dot", "general" or "concat" (attention="luong").
    attention_dim: additive / concat attention width (default: the encoder output width
      for Luong's concat, the decoder's H for Bahdanau's, as pytorch-seq2seq).
    input_feeding: Luong's input feeding (attention="luong").
    pad_id: the padding token id.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  vocab_size: int
  tgt_vocab_size: int | None = None
  cell: str = "lstm"
  embed_dim: int = 256
  hidden_size: int = 512
  decoder_hidden_size: int | None = None
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  reverse_source: bool = False
  attention: str = "none"
  luong_score: str = "general"
  attention_dim: int | None = None
  input_feeding: bool = True
  pad_id: int = PAD_ID
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.attention not in ATTENTIONS:
      raise ValueError(f"model.attention={self.attention!r}; allowed: {', '.join(ATTENTIONS)}")
    if self.luong_score not in LUONG_SCORES:
      raise ValueError(f"model.luong_score={self.luong_score!r}; allowed: "
                       f"{', '.join(LUONG_SCORES)}")
    if self.cell not in CELLS:
      raise ValueError(f"model.cell={self.cell!r}; allowed: {', '.join(sorted(CELLS))}")
    dec_hidden = self.decoder_hidden_size or self.hidden_size
    if (self.attention == "luong" and self.luong_score == "dot"
        and dec_hidden != self.hidden_size * (2 if self.bidirectional else 1)):
      raise ValueError(f"model.luong_score='dot' needs the decoder width ({dec_hidden}) to "
                       f"equal the encoder output width; use 'general' or 'concat'")
    embed = functools.partial(nn.Embed, features=self.embed_dim, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    self.src_embed = embed(self.vocab_size)
    self.tgt_embed = embed(self.tgt_vocab_size or self.vocab_size)
    dtype = {} if self.dtype is None else {"dtype": self.dtype}
    self.encoder = StackedRNN(cell=self.cell, hidden_size=self.hidden_size,
                              num_layers=self.num_layers, bidirectional=self.bidirectional,
                              dropout=self.dropout_rate, return_carry=True,
                              param_dtype=self.param_dtype, **dtype)
    attention_dim = self.attention_dim
    if attention_dim is None and self.attention == "bahdanau":
      attention_dim = dec_hidden
    self.decoder = DecoderCell(self.cell, dec_hidden, self.num_layers, self.dropout_rate,
                               self.attention, self.luong_score, attention_dim,
                               self.input_feeding, self.dtype, self.param_dtype)
    if self._bridged:  # One Dense per (layer, carry part): an LSTM's c and h are bridged apart.
      parts = 2 if self.cell == "lstm" else 1
      self.bridge = [nn.Dense(dec_hidden, dtype=self.dtype, param_dtype=self.param_dtype)
                     for _ in range(self.num_layers * parts)]
    self.dropout = nn.Dropout(self.dropout_rate)
    self.head = nn.Dense(self.tgt_vocab_size or self.vocab_size, dtype=self.dtype,
                         param_dtype=self.param_dtype)

  @property
  def _bridged(self) -> bool:
    dec_hidden = self.decoder_hidden_size or self.hidden_size
    return self.bidirectional or dec_hidden != self.hidden_size

  def source_lengths(self, src: Array, src_lengths: Array | None = None) -> Array:
    """[B] int32 valid lengths: `src_lengths`, or the count of non-padding tokens."""
    if src_lengths is None:
      return jnp.sum(src != self.pad_id, axis=1, dtype=jnp.int32)
    return jnp.asarray(src_lengths, jnp.int32)

  def encode(self, src: Array, src_lengths: Array | None = None, train: bool = False):
    """Encodes the source.

    Args:
      src: [B, S] token ids, padding at the end.
      src_lengths: [B] valid lengths, or None to count the non-`pad_id` tokens.
      train: enables dropout.

    Returns:
      The `encoded` pytree of the decoding protocol: {"memory": encoder outputs in source
      order [B, S, Dm] (zero at padding), "mask": [B, S] bool, "context": the top layer's
      final state [B, Dc], "carry": the decoder's initial carry}.
    """
    lengths = self.source_lengths(src, src_lengths)
    mask = jnp.arange(src.shape[1])[None, :] < lengths[:, None]  # [B, S]
    if self.reverse_source:
      src = flax_recurrent.flip_sequences(src, lengths, num_batch_dims=1, time_major=False)
    x = self.dropout(self.src_embed(src), deterministic=not train)  # [B, S, E]
    carry, memory = self.encoder(x, train, seq_lengths=lengths)
    if self.reverse_source:
      memory = flax_recurrent.flip_sequences(memory, lengths, num_batch_dims=1,
                                             time_major=False)
    memory = jnp.where(mask[:, :, None], memory, 0)  # Steps past a length are unspecified.
    context = self._final_state(carry[-1])
    return {"memory": memory, "mask": mask, "context": context,
            "carry": self._decoder_carry(carry, memory.shape[0])}

  def _final_state(self, layer_carry) -> Array:
    """The final hidden state of one encoder layer [B, H] ([B, 2H] bidirectional)."""
    hidden = self.decoder.make_cell(parent=None).hidden_state
    if self.bidirectional:
      return jnp.concatenate([hidden(layer_carry[0]), hidden(layer_carry[1])], -1)
    return hidden(layer_carry)

  def _decoder_carry(self, encoder_carry, batch: int) -> dict[str, Any]:
    """The decoder's initial carry from the encoder's final one (module docstring)."""
    if not self._bridged:
      rnn_carry = tuple(encoder_carry)
    else:
      layers, k = [], 0
      for layer in encoder_carry:
        one = layer[0] if self.bidirectional else layer  # One direction's carry structure.
        directions = layer if self.bidirectional else (layer,)
        parts = zip(*(jax.tree.leaves(d) for d in directions))  # LSTM: (c...), (h...)
        bridged = []
        for part in parts:
          bridged.append(jnp.tanh(self.bridge[k](jnp.concatenate(part, -1))))
          k += 1
        layers.append(jax.tree.unflatten(jax.tree.structure(one), bridged))
      rnn_carry = tuple(layers)
    carry = {"rnn": rnn_carry}
    if self.attention == "luong" and self.input_feeding:
      dtype = jax.tree.leaves(rnn_carry)[0].dtype
      carry["feed"] = jnp.zeros((batch, self.decoder.hidden_size), dtype)
    return carry

  @staticmethod
  def _static(encoded) -> dict[str, Array]:
    return {k: v for k, v in encoded.items() if k != "carry"}

  def decode(self, encoded, tgt_in: Array, train: bool = False, return_weights: bool = False):
    """Teacher-forced decoder: [B, T] target inputs (BOS first) -> logits [B, T, V_tgt].

    With `return_weights` also returns {"cross": attention weights [B, 1, T, S]} (one head:
    the layout of the transformer's cross-attention maps).

    Raises:
      ValueError: return_weights with attention "none" or "context" (no weights).
    """
    if return_weights and self.attention in ("none", "context"):
      raise ValueError(f"model.attention={self.attention!r} has no attention weights")
    y = self.dropout(self.tgt_embed(tgt_in), deterministic=not train)  # [B, T, E]

    def body(cell, carry, y_t, static):
      return cell(carry, y_t, static, train)

    scan = nn.scan(body, variable_broadcast="params",
                   split_rngs={"params": False, "dropout": True},
                   in_axes=(1, nn.broadcast), out_axes=1)
    _, (features, weights) = scan(self.decoder, encoded["carry"], y, self._static(encoded))
    logits = self.head(features)  # [B, T, V]
    if return_weights:
      return logits, {"cross": weights[:, None]}
    return logits

  def __call__(self, src: Array, tgt_in: Array, train: bool = False, *,
               src_lengths: Array | None = None, return_attention: bool = False):
    """Teacher-forced forward pass.

    Args:
      src: [B, S] source token ids (padding at the end).
      tgt_in: [B, T] target inputs (BOS then the target shifted right).
      train: enables dropout (needs a "dropout" rng).
      src_lengths: [B] valid source lengths, or None to count non-`pad_id` tokens.
      return_attention: also return the attention weights [B, T, S].

    Returns:
      logits [B, T, V_tgt], or (logits, weights [B, T, S]).
    """
    out = self.decode(self.encode(src, src_lengths, train), tgt_in, train, return_attention)
    if return_attention:
      return out[0], out[1]["cross"][:, 0]
    return out

  def init_cache(self, encoded, max_len: int) -> None:
    """Puts the decoder's initial carry in the "cache" collection (call with
    `mutable=["cache"]`); `max_len` is not needed: an RNN's state does not grow."""
    del max_len
    self.put_variable("cache", "carry", encoded["carry"])

  def decode_step(self, encoded, tokens: Array) -> Array:
    """One decoding step from the "cache" collection (call with `mutable=["cache"]`).

    Args:
      encoded: `encode`'s output (rows may be tiled per beam).
      tokens: [N] the previous tokens (BOS at the first step).

    Returns:
      logits [N, V_tgt] for the next token.
    """
    carry = self.get_variable("cache", "carry")
    carry, (features, _) = self.decoder(carry, self.tgt_embed(tokens), self._static(encoded))
    self.put_variable("cache", "carry", carry)
    return self.head(features)


seq2seq = variant_constructor(Seq2Seq, VARIANTS, "seq2seq")
