"""ts_fcn, ts_resnet, lstm_fcn: shapes, parameter counts by hand, any length, composability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import models


def _count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _bn(*widths) -> int:  # scale + bias of each BatchNorm
  return 2 * sum(widths)


FCN_BODY = 8 * 1 * 128 + 5 * 128 * 256 + 3 * 256 * 128 + _bn(128, 256, 128)  # 264,192
RESNET_BODY = (
    (8 * 1 * 64 + 5 * 64 * 64 + 3 * 64 * 64 + _bn(64, 64, 64) + 1 * 64 + _bn(64))
    + (8 * 64 * 128 + 5 * 128 * 128 + 3 * 128 * 128 + _bn(128, 128, 128) + 64 * 128 + _bn(128))
    + (8 * 128 * 128 + 5 * 128 * 128 + 3 * 128 * 128 + _bn(128, 128, 128) + _bn(128)))


@pytest.mark.parametrize("name,body,head_in", [
    ("ts_fcn", FCN_BODY, 128),
    ("ts_resnet", RESNET_BODY, 128),
    ("lstm_fcn", FCN_BODY + 4 * 8 * (150 + 8 + 1), 128 + 8),  # LSTM on 150 features, 8 cells
])
def test_parameter_counts_by_hand(name, body, head_in):
  assert FCN_BODY == 264_192 and RESNET_BODY == 502_848
  model = models.create(name, num_classes=3)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 150, 1)))
  assert _count(variables["params"]) == body + head_in * 3 + 3
  assert set(variables) == {"params", "batch_stats"}


@pytest.mark.parametrize("name", ["ts_fcn", "ts_resnet", "lstm_fcn"])
@pytest.mark.slow
def test_shapes_training_mode_and_composability(name):
  kwargs = dict(widths=(8, 16, 8)) | (dict(lstm_size=4) if name == "lstm_fcn" else {})
  model = models.create(name, num_classes=4, **kwargs)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 20, 2))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  apply = jax.jit(model.apply)
  logits = apply(variables, x)
  assert logits.shape == (3, 4) and jnp.isfinite(logits).all()
  # Global average pooling: the FCN and ResNet read any length with the same parameters.
  if name != "lstm_fcn":  # (dimension shuffle: the LSTM's input size is T)
    assert apply(variables, x[:, :11]).shape == (3, 4)

  # Training mode updates the BatchNorm statistics and differentiates.
  @jax.jit
  def grads_and_state(params):
    def loss(params):
      out, state = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(2)})
      return (out ** 2).mean(), state
    return jax.grad(loss, has_aux=True)(params)

  grads, state = grads_and_state(variables["params"])
  assert all(jnp.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["batch_stats"],
                         variables["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # vmap over single examples equals the batched call (inference mode).
  per_example = jax.jit(jax.vmap(lambda e: model.apply(variables, e[None])[0]))(x)
  np.testing.assert_allclose(per_example, logits, rtol=1e-5, atol=1e-5)
  # Pooling covers every step: a change at the last one reaches the logits.
  assert not np.allclose(apply(variables, x.at[:, -1].add(5.0)), logits)


def test_fcn_features_and_lstm_fcn_dimension_shuffle():
  x = jnp.zeros((1, 40, 1))
  features = models.create("ts_fcn", num_classes=0, widths=(4, 4, 4))
  assert jax.eval_shape(lambda: features.init_with_output(jax.random.PRNGKey(0), x)[0]).shape == (1, 4)
  for shuffle, rows in ((True, 40), (False, 1)):
    model = models.create("lstm_fcn", num_classes=2, lstm_size=3, widths=(4, 4, 4),
                          dimension_shuffle=shuffle)
    v = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert v["params"]["lstm"]["layer0"]["cell"]["input"]["kernel"].shape == (rows, 12)


def test_bad_inputs_are_refused():
  model = models.create("ts_fcn", num_classes=2)
  with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((2, 10)))
  with pytest.raises(ValueError, match="same length"):
    models.create("ts_fcn", num_classes=2, widths=(4, 4)).init(jax.random.PRNGKey(0),
                                                               jnp.zeros((1, 10, 1)))
