"""Token accuracy of every task that scores an argmax: NaN logits and ties count as wrong,
as in classification (a plain argmax counts target 0 right for all-NaN logits)."""

import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import tasks

B, T, V = 2, 3, 5


def _logits(kind: str, targets: np.ndarray) -> jnp.ndarray:
  """[B, T, V] logits where every target is the argmax ("right"), or broken ("nan", "tie",
  "nan_elsewhere": one NaN among otherwise right logits)."""
  logits = np.zeros((*targets.shape, V), np.float32)
  np.put_along_axis(logits, targets[..., None], 1.0, axis=-1)
  if kind == "nan":
    logits[:] = np.nan
  elif kind == "tie":
    logits[:] = 0.0
  elif kind == "nan_elsewhere":
    logits = np.where(np.arange(V) == (targets[..., None] + 1) % V, np.nan, logits)
  return jnp.asarray(logits)


def _language_model(kind):
  targets = np.zeros((B, T), np.int32)  # Target id 0: what argmax picks for all-NaN rows.
  metrics = tasks.create("language_model").loss_and_metrics(_logits(kind, targets),
                                                            {"targets": targets})[1]
  return metrics["accuracy"], metrics["count"]


def _translation(kind):
  targets = np.zeros((B, T), np.int32)
  batch = {"tgt_out": targets, "tgt_lengths": np.full((B,), T, np.int32)}
  metrics = tasks.create("translation").loss_and_metrics(_logits(kind, targets), batch)[1]
  return metrics["accuracy"], metrics["count"]


def _captioning(kind):
  task = tasks.create("captioning")
  captions = np.array([[4, 4], [4, 0]], np.int32)
  _, targets, _ = task.targets(jnp.asarray(captions))
  metrics = task.loss_and_metrics((_logits(kind, np.asarray(targets)), None),
                                  {"caption": captions})[1]
  return metrics["accuracy"], metrics["count"]


TASKS = {"language_model": _language_model, "translation": _translation,
         "captioning": _captioning}


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("kind,right", [("right", True), ("nan", False), ("tie", False),
                                        ("nan_elsewhere", False)])
def test_nan_logits_and_ties_are_wrong(task, kind, right):
  accuracy, count = TASKS[task](kind)
  assert count > 0
  assert float(accuracy) == (float(count) if right else 0.0)
