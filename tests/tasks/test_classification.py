import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnrnn import tasks


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
    tasks.create("segmentation", num_classes=3)
  with pytest.raises(ValueError, match="label_smoothing"):
    tasks.create("classification", num_classes=3, label_smoothing=1.5)
