"""The seq2seq registry model: every attention type, masking, source reversal, the one
decoder cell stepped vs scanned, generation, and learning a reversal."""

import functools

from flax.linen import recurrent as flax_recurrent
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import decode, models
from cnnrnn.models.seq2seq import BOS_ID, EOS_ID, VARIANTS

V = 13
TINY = dict(vocab_size=V, embed_dim=5, hidden_size=6)
# Each attention type, and the encoder options it is usually paired with.
CASES = {
    "none_lstm2": dict(attention="none", cell="lstm", num_layers=2),
    "none_reversed_bridged": dict(attention="none", cell="gru", reverse_source=True,
                                  decoder_hidden_size=7),
    "context_gru": dict(attention="context", cell="gru"),
    "bahdanau_bigru": dict(attention="bahdanau", cell="gru", bidirectional=True),
    "luong_general_feed": dict(attention="luong", cell="lstm", num_layers=2,
                               reverse_source=True),
    "luong_dot": dict(attention="luong", luong_score="dot", cell="gru", input_feeding=False),
    "luong_concat_bilstm": dict(attention="luong", luong_score="concat", cell="lstm",
                                bidirectional=True, decoder_hidden_size=8),
}
ATTENDING = [name for name, kw in CASES.items() if kw["attention"] in ("bahdanau", "luong")]


def _batch(seed=0, b=3, s=7, t=6, tgt_vocab=V):
  rng = np.random.default_rng(seed)
  src = rng.integers(4, V, (b, s))
  src[1, 5:], src[2, 3:] = 0, 0
  tgt = rng.integers(4, tgt_vocab, (b, t))
  tgt[:, 0] = BOS_ID
  return jnp.asarray(src), jnp.asarray(tgt)


def _model(name, **kw):
  return models.create("seq2seq", **TINY, **CASES[name], **kw)


def test_registry_variants_and_errors():
  assert "seq2seq" in models.names()
  m = models.create("seq2seq", variant="ptseq2seq_bahdanau", vocab_size=100, dropout_rate=0.2)
  assert (m.cell, m.bidirectional, m.attention, m.embed_dim, m.hidden_size, m.dropout_rate) == (
      "gru", True, "bahdanau", 256, 512, 0.2)
  assert {"ptseq2seq_lstm", "ptseq2seq_gru_context", "ptseq2seq_bahdanau", "luong"} <= set(
      VARIANTS)
  with pytest.raises(ValueError, match="known: ptseq2seq_lstm"):
    models.create("seq2seq", variant="bahdanau", vocab_size=10)
  src, tgt = _batch()
  for kw, match in [(dict(attention="global"), "model.attention='global'; allowed: none"),
                    (dict(attention="luong", luong_score="dot", bidirectional=True),
                     "luong_score='dot' needs the decoder width"),
                    (dict(cell="rnn"), "model.cell='rnn'")]:
    with pytest.raises(ValueError, match=match):
      models.create("seq2seq", **TINY, **kw).init(jax.random.key(0), src, tgt)


@pytest.mark.parametrize("name", sorted(CASES))
def test_attention_type(name):
  """Shapes; padded source positions get exactly zero weight and what they hold changes no
  logit; the decoder cell stepped by `decode_step` gives the teacher-forced logits."""
  model = _model(name, tgt_vocab_size=11)
  src, tgt = _batch(tgt_vocab=11)
  lengths = (src != 0).sum(1)
  garbage = jnp.where(src == 0, 9, src)  # padded slots filled with a real token id
  variables = model.init(jax.random.key(0), src, tgt)
  attending = name in ATTENDING

  @jax.jit
  def forward(variables):
    apply = functools.partial(model.apply, variables, return_attention=attending)
    return apply(src, tgt), apply(garbage, tgt, src_lengths=lengths), apply(garbage, tgt)

  out, masked, unmasked = forward(variables)
  logits = out[0] if attending else out
  assert logits.shape == (3, 6, 11) and np.isfinite(logits).all()
  np.testing.assert_array_equal(masked[0] if attending else masked, logits)
  assert not np.allclose(unmasked[0] if attending else unmasked, logits)  # real tokens count
  if attending:
    weights = np.asarray(out[1])
    assert weights.shape == (3, 6, 7)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    pad = np.broadcast_to(np.asarray(src == 0)[:, None, :], weights.shape)
    assert np.all(weights[pad] == 0) and np.all(weights[~pad] > 0)
  else:
    with pytest.raises(ValueError, match="has no attention weights"):
      model.apply(variables, src, tgt, return_attention=True)

  encoded = jax.jit(functools.partial(model.apply, method="encode"))(variables, src)
  _, cache = model.apply(variables, encoded, tgt.shape[1], method="init_cache",
                         mutable=["cache"])

  @jax.jit
  def step(cache, tokens):
    return model.apply({**variables, **cache}, encoded, tokens, method="decode_step",
                       mutable=["cache"])

  for t in range(tgt.shape[1]):
    step_logits, cache = step(cache, tgt[:, t])
    np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-6)
  if attending:  # decode(..., return_weights=True): the transformer's layout, one head.
    _, maps = model.apply(variables, encoded, tgt, return_weights=True, method="decode")
    np.testing.assert_allclose(maps["cross"][:, 0], out[1], rtol=1e-6, atol=1e-7)


def test_generate_beam_one_equals_greedy():
  model = _model("luong_general_feed")
  src, tgt = _batch()
  variables = jax.jit(model.init)(jax.random.key(3), src, tgt)
  max_len = 8
  tokens, scores = jax.jit(functools.partial(decode.generate, model, max_len=max_len))(
      variables, src)
  # A hand-written greedy loop over decode_step picks the same tokens.
  encoded = model.apply(variables, src, method="encode")
  _, cache = model.apply(variables, encoded, max_len, method="init_cache", mutable=["cache"])
  last, want, done = jnp.full((3,), BOS_ID), [], np.zeros(3, bool)
  for _ in range(max_len):
    logits, cache = model.apply({**variables, **cache}, encoded, last, method="decode_step",
                                mutable=["cache"])
    last = jnp.argmax(logits, -1)
    want.append(np.where(done, 0, last))
    done |= np.asarray(last) == EOS_ID
  np.testing.assert_array_equal(tokens, np.stack(want, 1))
  # Beam search with one beam and no length penalty is greedy search.
  variables_only = {k: v for k, v in variables.items() if k != "cache"}

  def step_fn(cache, tokens):
    logits, cache = model.apply({**variables_only, **cache}, encoded, tokens,
                                method="decode_step", mutable=["cache"])
    return jax.nn.log_softmax(logits), cache

  beam_tokens, beam_scores = jax.jit(lambda c: decode.beam_search(
      step_fn, c, BOS_ID, max_len, beam_size=1, alpha=0.0))(
          model.apply(variables, encoded, max_len, method="init_cache", mutable=["cache"])[1])
  np.testing.assert_array_equal(beam_tokens[:, 0], tokens)
  np.testing.assert_allclose(beam_scores[:, 0], scores, rtol=1e-5)


def test_source_reversal_reverses_within_the_length():
  """reverse_source on src == no reversal on src reversed by hand within each length (same
  parameters); the encoder outputs come back in source order, padding stays at the end."""
  kw = dict(TINY, cell="lstm", attention="luong", bidirectional=True)
  rev = models.create("seq2seq", **kw, reverse_source=True)
  plain = models.create("seq2seq", **kw)
  src, tgt = _batch()
  variables = jax.jit(plain.init)(jax.random.key(4), src, tgt)
  by_hand = np.asarray(src).copy()
  for b, n in enumerate((src != 0).sum(1)):
    by_hand[b, :n] = by_hand[b, :n][::-1]
  assert not np.array_equal(by_hand, src) and np.array_equal(by_hand == 0, src == 0)
  a = rev.apply(variables, src, method="encode")
  b = plain.apply(variables, jnp.asarray(by_hand), method="encode")
  lengths = (src != 0).sum(1)
  np.testing.assert_allclose(a["context"], b["context"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      a["memory"], flax_recurrent.flip_sequences(b["memory"], lengths, 1, False),
      rtol=1e-6, atol=1e-7)
  # Attention reads the memory as a set: the logits agree too.
  np.testing.assert_allclose(rev.apply(variables, src, tgt),
                             plain.apply(variables, jnp.asarray(by_hand), tgt),
                             rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training():
  model = models.create("seq2seq", variant="ptseq2seq_gru_context", **TINY)
  src, tgt = _batch()
  variables = jax.jit(model.init)(jax.random.key(0), src, tgt)
  train = jax.jit(lambda key: model.apply(variables, src, tgt, train=True,
                                          rngs={"dropout": key}))
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  evaluate = jax.jit(lambda: model.apply(variables, src, tgt))
  np.testing.assert_array_equal(evaluate(), evaluate())


def test_learns_to_reverse_and_decodes_it():
  """Adam steps on the reversal of variable-length sequences (padded); greedy decoding then
  reproduces the reversed sources."""
  import optax  # pylint: disable=g-import-not-at-top
  vocab, length, steps = 10, 5, 300
  model = models.create("seq2seq", vocab_size=vocab, cell="gru", embed_dim=16, hidden_size=32,
                        bidirectional=True, attention="bahdanau")

  def batch(key, n=64):
    k1, k2 = jax.random.split(key)
    lengths = jax.random.randint(k1, (n,), 2, length + 1)
    tokens = jax.random.randint(k2, (n, length), 4, vocab)
    src = jnp.where(jnp.arange(length)[None] < lengths[:, None], tokens, 0)
    rev = flax_recurrent.flip_sequences(src, lengths, 1, False)
    tgt_out = jnp.concatenate([rev, jnp.zeros((n, 1), rev.dtype)], 1)
    tgt_out = tgt_out.at[jnp.arange(n), lengths].set(EOS_ID)  # [n, length + 1]
    tgt_in = jnp.concatenate([jnp.full((n, 1), BOS_ID), tgt_out[:, :-1]], 1)
    return src, tgt_in, tgt_out

  tx = optax.adam(1e-2)
  params = model.init(jax.random.key(0), *batch(jax.random.key(1))[:2])["params"]

  @jax.jit
  def train(params, key):
    def step(carry, key):
      params, opt = carry
      src, tgt_in, tgt_out = batch(key)
      weights = (tgt_out != 0).astype(jnp.float32)

      def loss_fn(p):
        losses = optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, src, tgt_in), tgt_out)
        return jnp.sum(losses * weights) / jnp.sum(weights)

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), opt), loss
    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)),
                                       jax.random.split(key, steps))
    return params, losses

  params, losses = train(params, jax.random.key(2))
  assert losses[-1] < 0.05 * losses[0]
  src, _, want = batch(jax.random.key(3), 32)
  tokens, _ = jax.jit(functools.partial(decode.generate, model, max_len=length + 1))(
      {"params": params}, src)
  assert np.mean(np.all(np.asarray(tokens) == np.asarray(want), 1)) >= 0.9
