"""Semantic segmentation: a class for every pixel.

The model outputs logits [B, H, W, K]; the labels are `batch[label_key]` [B, H, W] integers
in 0..K-1 (e.g. `digit_scenes`: 0 background, 1 + the digit). Metrics:

- `loss`: per-pixel softmax cross-entropy, averaged over each image's pixels, then over
  images (the training loss);
- `pixel_accuracy`: the share of each image's pixels classified right, averaged over images;
- `miou` (evaluation): the mean over classes of intersection / union, |pred = c and label =
  c| / |pred = c or label = c|, counted over every pixel of the split (the PASCAL VOC
  convention: classes absent from both predictions and labels are left out of the mean),
  and `iou_c{k}` per class. It comes from the split's confusion matrix, which the
  evaluator sums over images (`cnnrnn.tasks.base.Evaluator`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnrnn.tasks import base

Array = jax.Array


def confusion_matrix(logits: Array, labels: Array, num_classes: int) -> Array:
  """Per-image confusion matrices: [B, H, W, K], [B, H, W] -> [B, K, K] int32 (rows: label,
  columns: prediction)."""
  pred = jnp.argmax(logits, axis=-1)
  index = (labels.astype(jnp.int32) * num_classes + pred).reshape(labels.shape[0], -1)
  counts = jax.vmap(lambda i: jnp.bincount(i, length=num_classes * num_classes))(index)
  return counts.reshape(-1, num_classes, num_classes).astype(jnp.int32)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
  """Per-class IoU from a [K, K] confusion matrix; NaN where the class is in neither."""
  confusion = np.asarray(confusion, np.float64)
  intersection = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, intersection / union, np.nan)


@dataclasses.dataclass(frozen=True)
class Segmentation(base.CheckedFields):
  """Predict `batch[label_key]` [B, H, W] from `batch[input_key]` (module docstring).

  Attributes:
    num_classes: classes per pixel, background included (logits' last dimension).
    input_key: batch key of the images.
    label_key: batch key of the per-pixel labels.
  """

  num_classes: int
  input_key: str = "image"
  label_key: str = "segmentation"

  # What every segmentation run logs, whatever its classes; `metric_names_for` adds the
  # per-class `iou_c{k}`, which depend on `num_classes`.
  metric_names = ("loss", "pixel_accuracy", "miou")

  @classmethod
  def check_fields(cls, values: dict) -> None:
    if values.get("num_classes") is not None:
      base.require("num_classes", values["num_classes"], lambda v: base.is_count(v) and v >= 2,
                   "an integer >= 2")

  @classmethod
  def metric_names_for(cls, values: dict) -> tuple[str, ...]:
    """Every metric a task with `config.task` values `values` can log.

    Args:
      values: the `config.task` fields (`num_classes` read; checked by `check_fields`).

    Returns:
      `metric_names` and `iou_c0` ... `iou_c{num_classes - 1}` (the evaluator logs `iou_c{k}`
      for each class k present in the split's labels or predictions); `metric_names` alone
      when `num_classes` is not set.
    """
    cls.check_fields(values)
    k = values.get("num_classes")
    return cls.metric_names + (tuple(f"iou_c{c}" for c in range(k)) if k is not None else ())

  def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
    return (batch[self.input_key],), {}

  def loss_and_metrics(self, logits: Array, batch: dict) -> tuple[Array, dict]:
    """Args:
      logits: [B, H, W, num_classes].
      batch: `label_key` [B, H, W] ints and optionally `mask` [B] (1 real, 0 padding).

    Returns:
      (mean training loss over real images, metric sums incl. `count`).
    """
    labels = batch[self.label_key].astype(jnp.int32)
    if logits.shape[:-1] != labels.shape or logits.shape[-1] != self.num_classes:
      raise ValueError(f"model output {logits.shape} does not fit labels {labels.shape} with "
                       f"{self.num_classes} classes (want [B, H, W, num_classes])")
    mask = batch.get("mask", jnp.ones(labels.shape[:1], jnp.float32))
    logits = logits.astype(jnp.float32)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    per_image = per_pixel.reshape(labels.shape[0], -1).mean(axis=1)
    correct = (jnp.argmax(logits, -1) == labels).reshape(labels.shape[0], -1).mean(axis=1)
    count = mask.sum()
    total = (per_image * mask).sum()
    return total / jnp.maximum(count, 1.0), {
        "loss": total, "pixel_accuracy": (correct * mask).sum(), "count": count}

  def evaluator(self, model, streams) -> "IoUEvaluator":
    """Sums the split's confusion matrix and scores `miou` and `iou_c{k}`."""
    del streams
    return IoUEvaluator(self, model)


@dataclasses.dataclass(frozen=True)
class IoUEvaluator:
  """`cnnrnn.tasks.base.Evaluator` of segmentation: per-image confusion matrices, summed."""

  task: Segmentation
  model: object

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return (self.task.input_key, self.task.label_key)

  def predict(self, variables, batch: dict) -> dict:
    logits = self.model.apply(variables, batch[self.task.input_key], train=False)
    return {"confusion": confusion_matrix(logits, batch[self.task.label_key],
                                          self.task.num_classes)}

  def score(self, rows: dict, split: str) -> dict:
    del split
    k = self.task.num_classes
    total = np.sum(rows["confusion"], axis=0) if rows.get("confusion") else np.zeros((k, k))
    iou = iou_from_confusion(total)
    present = ~np.isnan(iou)
    return {"miou": float(iou[present].mean()) if present.any() else float("nan"),
            **{f"iou_c{c}": float(iou[c]) for c in range(k) if present[c]}}
