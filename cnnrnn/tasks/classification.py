"""Image (or any) classification: softmax cross-entropy, accuracy, top-5 (ties count as wrong)."""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from cnnrnn.tasks import base


def label_rank(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """How many other classes score at least as high as the label: [B, C], [B] -> [B] int.

  Top-k accuracy counts an example as correct when its rank is below k. A tie counts
  against the label (all-equal logits, as from a dead model, score accuracy 0, not 1), and
  so does a NaN logit anywhere in the row: a NaN score is never a correct prediction.
  """
  num_classes = logits.shape[-1]
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  others = jnp.arange(num_classes)[None, :] != labels[:, None]
  at_least_as_high = (logits >= label_logit) | jnp.isnan(logits)
  rank = (at_least_as_high & others).sum(axis=-1)
  return jnp.where(jnp.isnan(label_logit[:, 0]), num_classes, rank)


def argmax_correct(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Whether the label alone scores highest: [..., C], [...] -> [...] bool.

  The token accuracy of every task. As in `label_rank`, a tie and a NaN logit count as
  wrong (a plain `argmax(logits) == labels` counts label 0 right for all-NaN logits).
  """
  flat = logits.reshape(-1, logits.shape[-1])
  return (label_rank(flat, labels.reshape(-1)) == 0).reshape(labels.shape)


@dataclasses.dataclass(frozen=True)
class Classification(base.CheckedFields):
  """Predict `batch[label_key]` from `batch[input_key]`.

  Metrics are returned as sums over the (masked) examples together with their `count`,
  so that a metric over many batches, or many devices, is sum / count: every example
  weighs the same, and padding (mask 0) weighs nothing.

  Attributes:
    num_classes: number of classes (logits' last dimension).
    label_smoothing: mass spread uniformly over all classes in the training target.
    input_key: batch key of the model input.
    label_key: batch key of the integer labels.
  """

  num_classes: int
  label_smoothing: float = 0.0
  input_key: str = "image"
  label_key: str = "label"

  # top5_accuracy only with more than 5 classes.
  metric_names = ("loss", "accuracy", "top5_accuracy")

  @classmethod
  def check_fields(cls, values: dict) -> None:
    if "label_smoothing" in values:
      base.require("label_smoothing", values["label_smoothing"], base.is_fraction, "[0, 1)")
    if values.get("num_classes") is not None:
      base.require("num_classes", values["num_classes"], base.is_count, "an integer >= 1")

  def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
    """The positional and keyword model arguments taken from `batch` (`seq_lengths` for
    variable-length sequences)."""
    kwargs = {"seq_lengths": batch["seq_lengths"]} if "seq_lengths" in batch else {}
    return (batch[self.input_key],), kwargs

  def loss_and_metrics(self, logits: jnp.ndarray, batch: dict) -> tuple[jnp.ndarray, dict]:
    """Args:
      logits: [B, num_classes].
      batch: with `label` [B] int and optionally `mask` [B] (1 real, 0 padding).

    Returns:
      (mean training loss over real examples, dict of metric sums incl. `count`).
    """
    labels = batch[self.label_key]
    mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32))
    logits = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, self.num_classes)
    target = optax.smooth_labels(onehot, self.label_smoothing) if self.label_smoothing else onehot
    per_example = optax.softmax_cross_entropy(logits, target)
    count = mask.sum()
    loss = (per_example * mask).sum() / jnp.maximum(count, 1.0)
    rank = label_rank(logits, labels)
    metrics = {
        "loss": (per_example * mask).sum(),
        "accuracy": ((rank == 0) * mask).sum(),
        "count": count,
    }
    if self.num_classes > 5:
      metrics["top5_accuracy"] = ((rank < 5) * mask).sum()
    return loss, metrics
