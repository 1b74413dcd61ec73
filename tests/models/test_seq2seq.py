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


@pytest.mark.slow
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
    maps = None
    if attending:  # decode(..., return_weights=True): the transformer's layout, one head.
      encoded = model.apply(variables, src, method="encode")
      maps = model.apply(variables, encoded, tgt, return_weights=True, method="decode")[1]
    return apply(src, tgt), apply(garbage, tgt, src_lengths=lengths), apply(garbage, tgt), maps

  out, masked, unmasked, maps = forward(variables)
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
    np.testing.assert_allclose(maps["cross"][:, 0], weights, rtol=1e-6, atol=1e-7)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_dropout_only_in_training():
  model = models.create("seq2seq", variant="ptseq2seq_gru_context", **TINY)
  src, tgt = _batch()
  variables = jax.jit(model.init)(jax.random.key(0), src, tgt)
  train = jax.jit(lambda key: model.apply(variables, src, tgt, train=True,
                                          rngs={"dropout": key}))
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  evaluate = jax.jit(lambda: model.apply(variables, src, tgt))
  np.testing.assert_array_equal(evaluate(), evaluate())


@pytest.mark.slow
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


@pytest.mark.slow
def test_bahdanau_variant_matches_the_pytorch_seq2seq_model():
  """`ptseq2seq_bahdanau` is pytorch-seq2seq tutorial 3/4's model: the same logits from the
  same weights (its modules written in torch below, packed BiGRU and masked attention)."""
  torch = pytest.importorskip("torch")
  e, h, v = 4, 6, V
  model = models.create("seq2seq", variant="ptseq2seq_bahdanau", vocab_size=v, embed_dim=e,
                        hidden_size=h)
  src, tgt = _batch(seed=5)
  params = jax.jit(model.init)(jax.random.key(6), src, tgt)["params"]
  t = lambda x: torch.from_numpy(np.array(x))  # noqa: E731
  embed_src, embed_tgt = torch.nn.Embedding(v, e), torch.nn.Embedding(v, e)
  enc = torch.nn.GRU(e, h, bidirectional=True, batch_first=True)
  fc, attn, energy = torch.nn.Linear(2 * h, h), torch.nn.Linear(3 * h, h), torch.nn.Linear(h, 1)
  dec, fc_out = torch.nn.GRU(2 * h + e, h, batch_first=True), torch.nn.Linear(3 * h + e, v)
  with torch.no_grad():
    embed_src.weight.copy_(t(params["src_embed"]["embedding"]))
    embed_tgt.weight.copy_(t(params["tgt_embed"]["embedding"]))
    for suffix, direction in (("l0", "forward_rnn"), ("l0_reverse", "backward_rnn")):
      cell = params["encoder"]["layer0"][direction]["cell"]
      getattr(enc, f"weight_ih_{suffix}").copy_(t(cell["input"]["kernel"]).T)
      getattr(enc, f"bias_ih_{suffix}").copy_(t(cell["input"]["bias"]))
      getattr(enc, f"weight_hh_{suffix}").copy_(t(cell["recurrent"]["kernel"]).T)
      getattr(enc, f"bias_hh_{suffix}").copy_(t(cell["recurrent"]["bias"]))
    cell = params["decoder"]["layer0"]
    dec.weight_ih_l0.copy_(t(cell["input"]["kernel"]).T)
    dec.bias_ih_l0.copy_(t(cell["input"]["bias"]))
    dec.weight_hh_l0.copy_(t(cell["recurrent"]["kernel"]).T)
    dec.bias_hh_l0.copy_(t(cell["recurrent"]["bias"]))
    fc.weight.copy_(t(params["bridge_0"]["kernel"]).T)
    fc.bias.copy_(t(params["bridge_0"]["bias"]))
    a = params["decoder"]["attention"]  # torch's attn reads [s; h_j]: W stacked on U.
    attn.weight.copy_(torch.cat([t(a["query"]["kernel"]), t(a["key"]["kernel"])]).T)
    attn.bias.copy_(t(a["key"]["bias"]))
    energy.weight.copy_(t(a["energy"]["kernel"]).T)
    energy.bias.zero_()  # the tutorial's v has no bias
    fc_out.weight.copy_(t(params["head"]["kernel"]).T)
    fc_out.bias.copy_(t(params["head"]["bias"]))

    src_t, tgt_t = torch.from_numpy(np.array(src)).long(), torch.from_numpy(np.array(tgt)).long()
    mask = src_t != 0
    packed = torch.nn.utils.rnn.pack_padded_sequence(embed_src(src_t), mask.sum(1),
                                                     batch_first=True, enforce_sorted=False)
    out, hidden = enc(packed)
    memory, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                       total_length=src.shape[1])
    s = torch.tanh(fc(torch.cat([hidden[-2], hidden[-1]], 1)))
    logits = []
    for step in range(tgt.shape[1]):
      y = embed_tgt(tgt_t[:, step])
      scores = energy(torch.tanh(attn(torch.cat(
          [s[:, None].expand(-1, src.shape[1], -1), memory], 2))))[:, :, 0]
      weights = torch.softmax(scores.masked_fill(~mask, -1e10), 1)
      context = torch.bmm(weights[:, None], memory)[:, 0]
      s = dec(torch.cat([y, context], 1)[:, None], s[None])[1][0]
      logits.append(fc_out(torch.cat([s, context, y], 1)))
  want = torch.stack(logits, 1).numpy()
  np.testing.assert_allclose(model.apply({"params": params}, src, tgt), want, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.slow
def test_batch_sharded_forward_and_greedy_decoding_need_no_gathers():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  P = PartitionSpec  # pylint: disable=invalid-name
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices (tests/conftest.py fakes 8 CPU devices)")
  model = _model("bahdanau_bigru")
  rng = np.random.default_rng(4)
  src, tgt = (jnp.asarray(rng.integers(4, V, (8, n))) for n in (7, 5))
  src = src.at[::2, 4:].set(0)
  variables = jax.jit(model.init)(jax.random.key(0), src, tgt)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  forward = jax.jit(model.apply, in_shardings=(replicated, rows, rows), out_shardings=rows)
  assert "all-gather" not in forward.lower(variables, src, tgt).compile().as_text()
  np.testing.assert_allclose(forward(variables, src, tgt),
                             jax.jit(model.apply)(variables, src, tgt), rtol=1e-5, atol=1e-6)
  greedy = jax.jit(functools.partial(decode.generate, model, max_len=6),
                   in_shardings=(replicated, rows))
  assert "all-gather" not in greedy.lower(variables, src).compile().as_text()
  tokens, _ = greedy(variables, src)
  assert tokens.sharding.spec == P("data")
