"""What a task is, for the trainer: the protocols, and the field checks tasks share.

A task is a frozen dataclass whose fields are its `config.task` fields (the config's
`task.name` picks the class in `cnnrnn.tasks.TASKS`, the other `task.*` fields are its
keyword arguments). It has:

- `model_inputs(batch) -> (args, kwargs)`: the model's arguments taken from a batch.
- `loss_and_metrics(outputs, batch) -> (loss, sums)`: the training loss and metric sums
  over the batch's real examples, with their `count` (a mean over many batches or devices
  is then sum / count; padding rows, `mask` 0, weigh nothing).
- `metric_names` (class attribute): every metric it logs, derived and evaluator metrics
  included; `checkpoint.best_metric` must be one of them.
- optionally `check_fields(values)` (classmethod): raises ValueError naming
  `task.FIELD`, its value and the allowed values. It runs on the `config.task` block
  before anything is read or compiled, and again when the task is built.
- optionally `metric_names_for(values)` (classmethod): the names it logs given its
  `config.task` values, where they depend on them (segmentation's per-class `iou_c{k}`);
  `checkpoint.best_metric` may then be any of these.
- optionally `derived_metrics(means) -> more means` (e.g. perplexity from the mean loss).
- optionally `evaluator(model, streams) -> Evaluator`: for tasks scored on outputs the
  model generates (decoding: BLEU, exact match). The trainer runs the loop over the split.
- optionally `stateful = True`: batches are contiguous streams and the model carries a
  recurrent state across them (language models; the model follows
  `cnnrnn.models.stateful`).

A task never imports the trainer (`cnnrnn.train`): it says what to compute, the trainer
runs it on the mesh.
"""

from collections.abc import Callable
import dataclasses
from typing import Any, ClassVar, Protocol

import jax
import numpy as np


class Evaluator(Protocol):
  """Scores a split on outputs the model generates, beyond the loss pass.

  The trainer's loop (`cnnrnn.train.evaluators`) puts `batch_keys` and `mask` of every
  batch of the split on the mesh, calls the jitted `predict(variables, batch)` (one
  compilation per batch shape), brings the rows whose `mask` is 1 to the host (every
  process receives every row), and at the end calls `score(rows, split)`.

  Attributes:
    batch_keys: the batch entries `predict` reads (`mask` is added by the trainer).
  """

  batch_keys: tuple[str, ...]

  def predict(self, variables: dict, batch: dict) -> dict[str, jax.Array]:
    """Pure and jittable: arrays whose first axis is the batch's rows [B, ...]."""

  def score(self, rows: dict[str, list[np.ndarray]], split: str) -> dict[str, Any]:
    """Metrics of the split from every real row of `predict`'s outputs, in batch order."""


class Task(Protocol):
  """The part of the task contract every task implements (see the module docstring)."""

  metric_names: ClassVar[tuple[str, ...]]

  def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
    ...

  def loss_and_metrics(self, outputs, batch: dict) -> tuple[jax.Array, dict]:
    ...


def require(field: str, value, ok: Callable[[Any], bool], allowed: str) -> None:
  """Raises ValueError `task.FIELD=VALUE; allowed: ALLOWED` unless `ok(value)`."""
  if not ok(value):
    raise ValueError(f"task.{field}={value!r}; allowed: {allowed}")


def is_fraction(v) -> bool:
  """A number in [0, 1)."""
  return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0


def is_non_negative(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def is_count(v) -> bool:
  """An integer >= 1."""
  return isinstance(v, int) and not isinstance(v, bool) and v >= 1


class CheckedFields:
  """Mixin for task dataclasses: `__post_init__` runs the class's `check_fields`."""

  @classmethod
  def check_fields(cls, values: dict) -> None:
    """Checks the `config.task` values present in `values` (the others are defaults)."""
    del values

  def __post_init__(self):
    self.check_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True)
class Decoding(CheckedFields):
  """Fields of the tasks scored on decoded outputs (translation, captioning).

  Attributes:
    label_smoothing: mass spread uniformly over the vocabulary in the training target
      (Szegedy et al. 2016; the Transformer paper uses 0.1).
    beam_size: 1 decodes greedily at evaluation, K > 1 with a beam of K.
    max_decode_len: most tokens generated per output, eos included (None: the task's
      default, from the data).
    length_penalty: alpha of the GNMT length penalty ((5 + len) / 6) ** alpha (beam only).
  """

  label_smoothing: float = 0.0
  beam_size: int = 1
  max_decode_len: int | None = None
  length_penalty: float = 0.6

  @classmethod
  def check_fields(cls, values: dict) -> None:
    checks = {
        "label_smoothing": (is_fraction, "[0, 1)"),
        "beam_size": (is_count, "an integer >= 1"),
        "max_decode_len": (lambda v: v is None or is_count(v), "None or an integer >= 1"),
        "length_penalty": (is_non_negative, ">= 0"),
    }
    for field, (ok, allowed) in checks.items():
      if field in values:
        require(field, values[field], ok, allowed)
