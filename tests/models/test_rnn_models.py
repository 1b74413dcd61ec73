"""RNNLM and RNNClassifier: shapes, carries, weight tying, sampling, registry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn.models.rnn_lm import RNNLM, sample

B, T, V, H = 2, 5, 13, 8


def _tokens(seed=0, shape=(B, T)):
  return jax.random.randint(jax.random.key(seed), shape, 0, V)


@pytest.mark.parametrize("cell", ["simple", "lstm", "gru"])
@pytest.mark.slow
def test_lm_shapes_and_carry(cell):
  model = models.create("rnn_lm", vocab_size=V, hidden_size=H, num_layers=2, cell=cell,
                        embedding_size=6, dropout=0.5)
  tokens = _tokens()
  variables = model.init(jax.random.key(0), tokens)
  carry, logits = model.apply(variables, tokens)
  assert logits.shape == (B, T, V)
  assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, model.zero_carry(B))
  assert variables["params"]["head"]["kernel"].shape == (H, V)
  # Consecutive batches with the carry passed on equal one batch over both.
  _, both = model.apply(variables, jnp.concatenate([tokens, tokens], axis=1))
  _, second = model.apply(variables, tokens, carry=carry)
  np.testing.assert_allclose(second, both[:, T:], rtol=1e-5, atol=1e-6)
  # Dropout only with train=True.
  _, train = model.apply(variables, tokens, train=True, rngs={"dropout": jax.random.key(1)})
  assert np.abs(train - logits).max() > 1e-4


@pytest.mark.slow
def test_lm_weight_tying_shares_the_embedding():
  model = RNNLM(vocab_size=V, hidden_size=H, num_layers=1, tie_weights=True)
  tokens = _tokens()
  variables = model.init(jax.random.key(0), tokens)
  params = variables["params"]
  assert "head" not in params and params["head_bias"].shape == (V,)
  untied = RNNLM(vocab_size=V, hidden_size=H, num_layers=1)
  n_params = lambda p: sum(x.size for x in jax.tree.leaves(p))
  assert n_params(untied.init(jax.random.key(0), tokens)) - n_params(variables) == H * V
  # The output layer really is the embedding: a row no input token uses still gets a
  # gradient through the output layer (and gets none when untied).
  unused = V - 1
  tokens = jnp.minimum(tokens, V - 2)
  for m, tied in ((model, True), (untied, False)):
    params = m.init(jax.random.key(0), tokens)["params"]
    grads = jax.grad(lambda p, m=m: m.apply({"params": p}, tokens)[1][..., unused].sum())(params)
    assert (float(jnp.abs(grads["embed"]["embedding"][unused]).max()) > 0) == tied
  with pytest.raises(ValueError, match="tie_weights"):
    RNNLM(vocab_size=V, hidden_size=H, embedding_size=H + 1, tie_weights=True).init(
        jax.random.key(0), tokens)


def test_lm_init_scale_is_uniform():
  model = RNNLM(vocab_size=V, hidden_size=H, num_layers=2, init_scale=0.05)
  params = model.init(jax.random.key(0), _tokens())["params"]
  for leaf in jax.tree.leaves(params):
    assert float(jnp.abs(leaf).max()) <= 0.05


@pytest.mark.slow
def test_sampling_is_deterministic_for_a_key():
  model = RNNLM(vocab_size=V, hidden_size=H, num_layers=2, cell="gru")
  prompt = _tokens(shape=(3, 4))
  variables = model.init(jax.random.key(0), prompt)
  draw = jax.jit(functools.partial(sample, model, num_steps=6, temperature=0.9))
  a = draw(variables, prompt, jax.random.key(5))
  assert a.shape == (3, 10) and a.dtype == prompt.dtype
  np.testing.assert_array_equal(a[:, :4], prompt)
  np.testing.assert_array_equal(a, draw(variables, prompt, jax.random.key(5)))
  assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < V))
  # Greedy sampling continues exactly like the model's argmax, step by step.
  greedy = sample(model, variables, prompt, jax.random.key(0), 3, temperature=0.0)
  _, logits = model.apply(variables, greedy[:, :-1])
  np.testing.assert_array_equal(greedy[:, 4:], jnp.argmax(logits[:, 3:], axis=-1))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("many_to_many", [False, True])
@pytest.mark.slow
def test_classifier_shapes(bidirectional, many_to_many):
  model = models.create("rnn_classifier", num_outputs=3, hidden_size=H, num_layers=2,
                        cell="gru", bidirectional=bidirectional, many_to_many=many_to_many)
  x = jax.random.normal(jax.random.key(0), (B, T, 4))
  variables = model.init(jax.random.key(1), x)
  out = model.apply(variables, x, seq_lengths=jnp.array([T, 2]))
  assert out.shape == ((B, T, 3) if many_to_many else (B, 3))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.slow
def test_classifier_reads_the_last_valid_step(bidirectional):
  model = models.create("rnn_classifier", num_outputs=2, hidden_size=H, cell="lstm",
                        bidirectional=bidirectional, vocab_size=V)
  tokens = _tokens()
  variables = model.init(jax.random.key(1), tokens)
  lengths = jnp.array([T, 3])
  out = model.apply(variables, tokens, seq_lengths=lengths)
  alone = model.apply(variables, tokens[1:, :3])
  np.testing.assert_allclose(out[1:], alone, rtol=1e-5, atol=1e-6)
  padded = tokens.at[1, 3:].set(0)
  np.testing.assert_allclose(model.apply(variables, padded, seq_lengths=lengths), out,
                             rtol=1e-6, atol=1e-6)


def test_bad_arguments_raise():
  x = jnp.ones((B, T, 4))
  with pytest.raises(ValueError, match="allowed: gru, lstm, simple"):
    models.create("rnn_classifier", num_outputs=2, cell="transformer").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="allowed: gru, lstm, simple"):
    RNNLM(vocab_size=V, cell="elman").init(jax.random.key(0), _tokens())
  with pytest.raises(ValueError, match="token ids"):
    models.create("rnn_classifier", num_outputs=2, vocab_size=V).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"\[batch, time\]"):
    RNNLM(vocab_size=V).init(jax.random.key(0), x)
  assert {"rnn_lm", "rnn_classifier"} <= set(models.names())
