"""The transformer registry model: variants, masking, cached decoding, generation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import decode, models
from cnnrnn.models.transformer import BOS_ID, EOS_ID, VARIANTS

V = 17
# One layer each: the stacks' cache handling across layers is tested in tests/nn.
TINY = dict(vocab_size=V, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_len=16)


def _batch(seed=0, b=3, s=7, t=6):
  rng = np.random.default_rng(seed)
  src = rng.integers(4, V, (b, s))
  src[1, 5:], src[2, 3:] = 0, 0
  tgt = rng.integers(4, V, (b, t))
  tgt[:, 0] = BOS_ID
  return jnp.asarray(src), jnp.asarray(tgt)


def test_registry_variants_and_errors():
  assert "transformer" in models.names()
  m = models.create("transformer", variant="small", vocab_size=100, dropout_rate=0.2)
  assert (m.num_layers, m.d_model, m.num_heads, m.mlp_dim, m.dropout_rate) == (3, 256, 8, 512, 0.2)
  assert m.init_scheme == "xavier_uniform"  # pytorch-seq2seq's init, as its model
  assert set(VARIANTS) == {"base", "big", "small", "tiny"}
  with pytest.raises(ValueError, match="known: base, big, small, tiny"):
    models.create("transformer", variant="huge", vocab_size=10)
  src, tgt = _batch()
  with pytest.raises(ValueError, match="share_embeddings needs one vocabulary"):
    models.create("transformer", **TINY, tgt_vocab_size=5, share_embeddings=True).init(
        jax.random.key(0), src, tgt)


@pytest.mark.slow
def test_init_schemes():
  """"default": tokens normal(D^-1/2), positions normal(0.02), LeCun projections;
  "xavier_uniform": Glorot uniform on every matrix, each sized by its own fans (attention
  kernels [D, H, Dh] as [D, H*Dh]); biases zero and LayerNorms (1, 0) in both."""
  d, v_src, v_tgt, max_len = 64, 300, 200, 40
  kw = dict(vocab_size=v_src, tgt_vocab_size=v_tgt, num_layers=1, d_model=d, num_heads=4,
            mlp_dim=128, max_len=max_len, positions="learned")
  src, tgt = _batch()

  def params(scheme):
    model = models.create("transformer", **kw, init_scheme=scheme)
    return model.init(jax.random.key(0), src, tgt)["params"]

  default = params("default")
  np.testing.assert_allclose(np.std(default["src_embed"]["embedding"]), d ** -0.5, rtol=0.05)
  np.testing.assert_allclose(np.std(default["src_pos"]["embedding"]), 0.02, rtol=0.05)
  np.testing.assert_allclose(np.std(default["head"]["kernel"]), d ** -0.5, rtol=0.05)

  xavier = params("xavier_uniform")
  fans = {  # name: (fan_in, fan_out) of the torch-style 2D matrix
      ("src_embed", "embedding"): (v_src, d), ("tgt_embed", "embedding"): (v_tgt, d),
      ("src_pos", "embedding"): (max_len, d), ("head", "kernel"): (d, v_tgt),
      ("encoder", "layer0", "attn", "query", "kernel"): (d, d),
      ("encoder", "layer0", "attn", "out", "kernel"): (d, d),
      ("decoder", "layer0", "cross_attn", "value", "kernel"): (d, d),
      ("encoder", "layer0", "mlp", "fc1", "kernel"): (d, 128),
      ("decoder", "layer0", "mlp", "fc2", "kernel"): (128, d),
  }
  for path, (fan_in, fan_out) in fans.items():
    w = np.asarray(functools.reduce(lambda node, k: node[k], path, xavier))
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound, path
    np.testing.assert_allclose(np.std(w), bound / 3 ** 0.5, rtol=0.1, err_msg=str(path))
  for scheme in (default, xavier):
    layer = scheme["decoder"]["layer0"]
    assert not np.any(layer["self_attn"]["query"]["bias"]) and not np.any(scheme["head"]["bias"])
    assert np.all(layer["norm1"]["scale"] == 1) and not np.any(layer["norm1"]["bias"])
  with pytest.raises(ValueError, match="init_scheme='glorot'; allowed: default, xavier_uniform"):
    params("glorot")


@pytest.mark.parametrize("variant", ["base", "big"])
def test_parameter_counts_match_torch(variant):
  """Encoder + decoder stacks count exactly as torch.nn.Transformer's; plus the embeddings."""
  torch = pytest.importorskip("torch")
  cfg = VARIANTS[variant]
  vocab = 1000
  model = models.create("transformer", variant=variant, vocab_size=vocab, final_norm=True,
                        share_embeddings=True, tie_output=True)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                          jnp.ones((1, 3), jnp.int32))["params"]
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  with torch.device("meta"):
    ref = torch.nn.Transformer(cfg["d_model"], cfg["num_heads"], cfg["num_layers"],
                               cfg["num_layers"], cfg["mlp_dim"])
  want = sum(p.numel() for p in ref.parameters()) + vocab * cfg["d_model"] + vocab
  assert count == want


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(norm_first=True, positions="learned", share_embeddings=True, tie_output=True),
    dict(fused_qkv=True, tgt_vocab_size=11),
])
@pytest.mark.slow
def test_cached_decoding_equals_the_full_forward_pass(kwargs):
  model = models.create("transformer", **TINY, **kwargs)
  src, tgt = _batch()
  tgt = tgt % kwargs.get("tgt_vocab_size", V)
  variables = jax.jit(model.init)(jax.random.key(0), src, tgt)
  full = jax.jit(model.apply)(variables, src, tgt)
  encoded = jax.jit(functools.partial(model.apply, method="encode"))(variables, src)
  _, cache = jax.jit(lambda v, e: model.apply(v, e, tgt.shape[1], method="init_cache",
                                              mutable=["cache"]))(variables, encoded)

  @jax.jit
  def step(cache, tokens):
    return model.apply({**variables, **cache}, encoded, tokens, method="decode_step",
                       mutable=["cache"])

  for t in range(tgt.shape[1]):
    logits, cache = step(cache, tgt[:, t])
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_source_padding_is_masked():
  model = models.create("transformer", **TINY)
  src, tgt = _batch()
  variables = jax.jit(model.init)(jax.random.key(0), src, tgt)
  apply = jax.jit(model.apply)
  out = apply(variables, src, tgt)
  lengths = (src != 0).sum(1)
  garbage = jnp.where(src == 0, 9, src)  # padded slots filled with a real token id
  np.testing.assert_allclose(apply(variables, garbage, tgt, src_lengths=lengths), out,
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(apply(variables, garbage, tgt), out)
  # Cross-attention maps (for heat maps): padded source positions get no weight.
  logits, weights = jax.jit(lambda v: model.apply(
      v, model.apply(v, src, method="encode"), tgt, return_weights=True, method="decode"))(
          variables)
  np.testing.assert_allclose(logits, out, rtol=1e-5, atol=1e-6)
  assert len(weights) == TINY["num_layers"]
  cross = np.asarray(weights[-1]["cross"])  # [B, H, T, S]
  assert cross.shape == (3, 2, tgt.shape[1], src.shape[1])
  np.testing.assert_allclose(cross.sum(-1), 1.0, rtol=1e-5)
  assert not np.any(cross[np.broadcast_to(np.asarray(src == 0)[:, None, None, :], cross.shape)])


@pytest.mark.slow
def test_dropout_only_in_training():
  model = models.create("transformer", **TINY, dropout_rate=0.3, attention_dropout_rate=0.1)
  src, tgt = _batch()
  variables = jax.jit(model.init)(jax.random.key(0), src, tgt)
  train = jax.jit(lambda key: model.apply(variables, src, tgt, train=True,
                                          rngs={"dropout": key}))
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  evaluate = jax.jit(lambda: model.apply(variables, src, tgt))
  np.testing.assert_array_equal(evaluate(), evaluate())


@pytest.mark.slow
def test_generate_greedy_follows_the_full_model_and_beam_runs_jitted():
  model = models.create("transformer", **TINY)
  src, _ = _batch()
  variables = jax.jit(model.init)(jax.random.key(3), src, src[:, :3])
  max_len = 8
  tokens, scores = jax.jit(functools.partial(decode.generate, model, max_len=max_len))(
      variables, src)
  # Re-scoring the greedy output with teacher forcing: each token is the argmax.
  tgt_in = jnp.concatenate([jnp.full((src.shape[0], 1), BOS_ID), tokens[:, :-1]], 1)
  log_probs = jax.nn.log_softmax(jax.jit(model.apply)(variables, src, tgt_in))
  alive = jnp.cumsum(tokens == EOS_ID, 1) - (tokens == EOS_ID) == 0  # up to and with EOS
  np.testing.assert_array_equal(jnp.where(alive, jnp.argmax(log_probs, -1), 0), tokens)
  picked = jnp.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(jnp.where(alive, picked, 0).sum(1), scores, rtol=1e-5)
  beam = jax.jit(functools.partial(decode.generate, model, max_len=max_len, beam_size=3,
                                   alpha=0.6))
  beam_tokens, beam_scores = beam(variables, src)
  assert beam_tokens.shape == (src.shape[0], max_len)
  lengths = jnp.where(alive, 1, 0).sum(1)
  greedy_penalised = scores / decode.length_penalty(lengths, 0.6)
  finished = jnp.any(tokens == EOS_ID, 1)
  # Beam search finds hypotheses at least as good as greedy's (when greedy finished).
  assert np.all(np.asarray(beam_scores)[finished] >= np.asarray(greedy_penalised)[finished] - 1e-5)


@pytest.mark.slow
def test_learns_to_reverse_and_decodes_it():
  """150 Adam steps on sequence reversal; beam decoding then reproduces it."""
  import optax  # pylint: disable=g-import-not-at-top
  vocab, length = 12, 5
  model = models.create("transformer", vocab_size=vocab, num_layers=1, d_model=32, num_heads=4,
                        mlp_dim=64, dropout_rate=0.0, max_len=8)

  def batch(key, n=64):
    src = jax.random.randint(key, (n, length), 4, vocab)
    tgt_in = jnp.concatenate([jnp.full((n, 1), BOS_ID), src[:, ::-1]], 1)
    tgt_out = jnp.concatenate([src[:, ::-1], jnp.full((n, 1), EOS_ID)], 1)
    return src, tgt_in, tgt_out

  tx = optax.adam(3e-3)
  params = model.init(jax.random.key(0), *batch(jax.random.key(1))[:2])["params"]

  @jax.jit
  def train(params, key):
    def step(carry, key):
      params, opt = carry
      src, tgt_in, tgt_out = batch(key)
      loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
          model.apply({"params": p}, src, tgt_in), tgt_out).mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), opt), loss
    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, 150))
    return params, losses

  params, losses = train(params, jax.random.key(2))
  assert losses[-1] < 0.05 * losses[0]
  src, _, want = batch(jax.random.key(3), 16)
  tokens, _ = jax.jit(functools.partial(decode.generate, model, max_len=length + 1,
                                        beam_size=3))({"params": params}, src)
  assert np.mean(np.all(np.asarray(tokens) == np.asarray(want), 1)) >= 0.9


@pytest.mark.slow
def test_batch_sharded_forward_and_greedy_decoding_need_no_gathers():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  P = PartitionSpec  # pylint: disable=invalid-name
  model = models.create("transformer", **TINY)
  rng = np.random.default_rng(4)
  src, tgt = (jnp.asarray(rng.integers(4, V, (8, n))) for n in (7, 5))
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
