import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnrnn import tasks


@pytest.mark.slow
def test_loss_counts_only_real_tokens_and_derives_perplexity():
  task = tasks.create("language_model")
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7))
  targets = jnp.array([[1, 2, 3], [4, 5, 0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
  loss, m = task.loss_and_metrics(logits, {"targets": targets, "mask": mask})
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  expected = float(nll[0].sum() + nll[1, :2].sum())
  np.testing.assert_allclose(m["loss"], expected, rtol=1e-6)
  assert m["count"] == 5
  np.testing.assert_allclose(loss, expected / 5, rtol=1e-6)
  correct = (np.argmax(logits, -1) == np.asarray(targets)) * np.asarray(mask)
  assert m["accuracy"] == correct.sum()
  derived = task.derived_metrics({"loss": 1.5})
  assert math.isclose(derived["perplexity"], math.exp(1.5))
  assert math.isclose(derived["bits_per_token"], 1.5 / math.log(2))
  assert task.stateful and "language_model" in tasks.names()


@pytest.mark.slow
def test_rows_average_sums_over_time_like_zaremba():
  logits = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 9))
  targets = jax.random.randint(jax.random.PRNGKey(2), (4, 5), 0, 9)
  per_token, m1 = tasks.create("language_model").loss_and_metrics(logits, {"targets": targets})
  per_row, m2 = tasks.create("language_model", average_over="rows").loss_and_metrics(
      logits, {"targets": targets})
  np.testing.assert_allclose(per_row, 5 * per_token, rtol=1e-6)  # T = 5 steps.
  assert jax.tree.map(float, m1) == jax.tree.map(float, m2)  # Metrics stay per token.
  with pytest.raises(ValueError, match="task.average_over='steps'; allowed: 'tokens', 'rows'"):
    tasks.create("language_model", average_over="steps")
