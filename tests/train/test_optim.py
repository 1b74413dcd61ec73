import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnnrnn.train import optim


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(name="momentum", learning_rate=0.1, momentum=0.9,
                                     weight_decay=0.0, schedule="constant", warmup_steps=0))
  c.update(kw)
  return c


def test_step_schedule_he_et_al():
  s = optim.make_schedule(_cfg(schedule="step", decay_boundaries=(32000, 48000), decay_factor=0.1), 64000)
  np.testing.assert_allclose([s(0), s(31999), s(32000), s(48000), s(63999)],
                             [0.1, 0.1, 0.01, 0.001, 0.001], rtol=1e-5)


def test_warmup_then_cosine():
  s = optim.make_schedule(_cfg(schedule="cosine", warmup_steps=10), 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-6)


def test_inverse_sqrt_is_vaswani_et_al():
  d_model, warmup = 512, 4000
  s = optim.make_schedule(_cfg(schedule="inverse_sqrt", warmup_steps=warmup,
                               learning_rate=(d_model * warmup) ** -0.5), 100_000)
  steps = np.array([1, 100, 3999, 4000, 4001, 10_000, 99_999])
  paper = d_model ** -0.5 * np.minimum(steps ** -0.5, steps * warmup ** -1.5)
  np.testing.assert_allclose([s(int(t)) for t in steps], paper, rtol=1e-4)  # float32
  s = optim.make_schedule(_cfg(schedule="inverse_sqrt", learning_rate=2.0), 100)
  np.testing.assert_allclose([s(0), s(3), s(99)], [2.0, 1.0, 0.2], rtol=1e-6)


def test_exponential_per_epoch_decay():
  s = optim.make_schedule(_cfg(schedule="exponential", learning_rate=1.0, decay_rate=0.5,
                               decay_begin=100, decay_every=10), 1000)
  np.testing.assert_allclose([s(99), s(100), s(110), s(125)], [1.0, 1.0, 0.5, 0.25])


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_takes_a_step_and_decays(name):
  tx, _ = optim.make_optimizer(_cfg(name=name, weight_decay=0.1, clip_norm=1.0), 10)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
  assert float(updates["w"][0]) < 0  # Only weight decay acts on a zero gradient.


def test_sgd_weight_decay_is_coupled_l2_like_pytorch():
  tx, _ = optim.make_optimizer(_cfg(name="sgd", learning_rate=0.5, weight_decay=0.1), 10)
  params, grads = {"w": jnp.array([2.0])}, {"w": jnp.array([1.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], [2.0 - 0.5 * (1.0 + 0.1 * 2.0)])


@pytest.mark.parametrize("field,value,match", [
    ("name", "lamb", "optimizer.name='lamb'; allowed: sgd, momentum"),
    ("schedule", "poly", "optimizer.schedule='poly'; allowed: constant"),
    ("learning_rate", -0.1, "optimizer.learning_rate=-0.1"),
])
def test_bad_optimizer_fields(field, value, match):
  with pytest.raises(ValueError, match=match):
    optim.validate(_cfg(**{field: value}))
