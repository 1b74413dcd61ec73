import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnrnn import tasks


@pytest.mark.slow
def test_loss_and_metrics_against_hand_computation():
  task = tasks.create("classification", num_classes=6)
  logits = jax.random.normal(jax.random.key(0), (5, 6))
  labels = jnp.array([0, 1, 2, 3, 4])
  mask = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])
  loss, m = task.loss_and_metrics(logits, {"label": labels, "mask": mask})
  ce = -jax.nn.log_softmax(logits)[jnp.arange(5), labels]
  np.testing.assert_allclose(loss, ce[:4].mean(), rtol=1e-6)
  np.testing.assert_allclose(m["loss"], ce[:4].sum(), rtol=1e-6)
  assert m["count"] == 4
  assert m["accuracy"] == (jnp.argmax(logits, -1) == labels)[:4].sum()
  ranks = (logits > logits[jnp.arange(5), labels][:, None]).sum(-1)
  assert m["top5_accuracy"] == (ranks < 5)[:4].sum()


def test_label_smoothing_matches_optax():
  task = tasks.create("classification", num_classes=4, label_smoothing=0.1)
  logits = jax.random.normal(jax.random.key(1), (3, 4))
  labels = jnp.array([0, 3, 1])
  loss, _ = task.loss_and_metrics(logits, {"label": labels})
  target = optax.smooth_labels(jax.nn.one_hot(labels, 4), 0.1)
  np.testing.assert_allclose(loss, optax.softmax_cross_entropy(logits, target).mean(), rtol=1e-6)


def test_bad_task_fields():
  with pytest.raises(ValueError, match="known tasks"):
    tasks.create("detection", num_classes=3)
  with pytest.raises(ValueError, match="label_smoothing"):
    tasks.create("classification", num_classes=3, label_smoothing=1.5)


@pytest.mark.slow
def test_ties_and_nan_logits_count_as_wrong():
  task = tasks.create("classification", num_classes=10)
  labels = jnp.array([0, 3, 9])
  equal = jnp.zeros((3, 10))
  _, m = task.loss_and_metrics(equal, {"label": labels})
  assert (m["accuracy"], m["top5_accuracy"]) == (0, 0)
  nan = jnp.full((3, 10), jnp.nan)
  _, m = task.loss_and_metrics(nan, {"label": labels})
  assert (m["accuracy"], m["top5_accuracy"]) == (0, 0)
  # One NaN elsewhere in a row that would otherwise be right, and a NaN label logit.
  logits = jax.nn.one_hot(labels, 10) * 5.0
  logits = logits.at[0, 4].set(jnp.nan).at[1, 3].set(jnp.nan)
  _, m = task.loss_and_metrics(logits, {"label": labels})
  assert m["accuracy"] == 1  # Only the third row, untouched, is right.
  # A tie between the label and one other class: wrong for top-1, right for top-5.
  tie = jnp.zeros((1, 10)).at[0, 2].set(1.0).at[0, 7].set(1.0)
  _, m = task.loss_and_metrics(tie, {"label": jnp.array([2])})
  assert (m["accuracy"], m["top5_accuracy"]) == (0, 1)
