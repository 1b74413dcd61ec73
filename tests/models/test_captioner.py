"""captioner: attention weights sum to one over the grid, decoding through cnnrnn.decode runs
the teacher-forced model step by step, beam 1 equals greedy, the no-attention variant."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import decode
from cnnrnn import models

V = 12
IMAGES = jax.random.normal(jax.random.key(0), (3, 16, 16, 1))
TGT_IN = jax.random.randint(jax.random.key(2), (3, 6), 4, V).at[:, 0].set(decode.BOS_ID)


def _model(**kwargs):
  return models.create("captioner", vocab_size=V, embed_size=8, hidden_size=16,
                       attention_size=8,
                       encoder_kwargs=dict(features=(4, 8), pool_every=1, dense=()), **kwargs)


@functools.lru_cache(maxsize=None)
def _setup(attention=True):
  model = _model(attention=attention)
  return model, model.init(jax.random.key(1), IMAGES, TGT_IN)


@pytest.mark.slow
def test_attention_weights_sum_to_one_over_the_grid():
  model, variables = _setup()
  logits, alpha = model.apply(variables, IMAGES, TGT_IN, return_attention=True)
  assert logits.shape == (3, 6, V) and alpha.shape == (3, 6, 16)  # 16x16 -> 4x4 grid
  assert np.all(alpha >= 0)
  np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)


def test_decoding_runs_the_teacher_forced_model():
  """Greedy decoding's tokens, fed back teacher-forced, give the logits it picked from."""
  model, variables = _setup()
  tokens, scores = decode.generate(model, variables, IMAGES, max_len=6, eos_id=V + 1)
  tgt_in = jnp.concatenate([jnp.full((3, 1), decode.BOS_ID), tokens[:, :-1]], axis=1)
  logits = model.apply(variables, IMAGES, tgt_in)
  np.testing.assert_array_equal(jnp.argmax(logits, -1), tokens)
  logp = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(jnp.take_along_axis(logp, tokens[..., None], -1).sum((1, 2)),
                             scores, rtol=1e-5)


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.slow
def test_beam_one_equals_greedy(attention):
  model, variables = _setup(attention)
  run = jax.jit(functools.partial(decode.generate, model, max_len=7), static_argnames="beam_size")
  greedy, _ = run(variables, IMAGES, beam_size=1)
  greedy_search, _ = decode.greedy_search(*_step_fn(model, variables), decode.BOS_ID, 7)
  beam, _ = decode.beam_search(*_step_fn(model, variables), decode.BOS_ID, 7, beam_size=1,
                               alpha=0.0)
  np.testing.assert_array_equal(greedy, greedy_search)
  np.testing.assert_array_equal(beam[:, 0], greedy)
  beam4, _ = run(variables, IMAGES, beam_size=4)
  assert beam4.shape == greedy.shape


def _step_fn(model, variables):
  encoded = model.apply(variables, IMAGES, method="encode")
  _, cache = model.apply(variables, encoded, 7, method="init_cache", mutable=["cache"])

  def step(cache, tokens):
    logits, cache = model.apply({**variables, **cache}, encoded, tokens, method="decode_step",
                                mutable=["cache"])
    return jax.nn.log_softmax(logits), cache

  return step, cache


def test_no_attention_variant_sees_the_image_only_through_the_initial_state():
  model, variables = _setup(attention=False)
  params = variables["params"]
  assert "attention" not in params["decoder"] and "beta" not in params["decoder"]
  assert params["decoder"]["lstm"]["input"]["kernel"].shape[0] == 8  # the word embedding only
  logits, alpha = model.apply(variables, IMAGES, TGT_IN, return_attention=True)
  assert alpha is None and logits.shape == (3, 6, V)
  # The initial state depends on the mean annotation only: a permuted grid gives the same.
  enc = model.apply(variables, IMAGES, method="encode")["annotations"]
  with_mean = lambda a: model.apply(variables, a, method="initial_carry")
  np.testing.assert_allclose(with_mean(enc)[1], with_mean(enc[:, ::-1])[1], rtol=1e-5)


def test_the_encoder_must_give_a_grid():
  model = models.create("captioner", vocab_size=V,
                        encoder_kwargs=dict(features=(4,), dense=(8,)))
  with pytest.raises(ValueError, match="not a grid"):
    model.init(jax.random.key(0), IMAGES, TGT_IN)
