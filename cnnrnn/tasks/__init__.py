"""What is learned: a loss, metrics and the batch keys, per problem type.

The contract a task implements (methods, `metric_names`, `check_fields`, the optional
`evaluator` for scoring generated outputs) is in `cnnrnn.tasks.base`.

Adding a task touches its own file and this registry, nothing in `cnnrnn.train`:

1. Write a frozen dataclass in `cnnrnn/tasks/NAME.py` whose fields are its `config.task`
   fields, with `model_inputs`, `loss_and_metrics` and `metric_names` (subclass
   `base.CheckedFields` and define `check_fields` to have its field values checked
   before anything is compiled).
2. Add it to `TASKS` below (or, from code outside cnnrnn, call `register(name, cls)`).

The config schema (`cnnrnn.train.config_schema`) then knows its fields (typos get
suggestions) and its metric names (`checkpoint.best_metric`).
"""

import dataclasses

from cnnrnn.tasks.captioning import Captioning
from cnnrnn.tasks.classification import Classification
from cnnrnn.tasks.forecasting import Forecasting
from cnnrnn.tasks.language_model import LanguageModel
from cnnrnn.tasks.regression import Regression
from cnnrnn.tasks.segmentation import Segmentation
from cnnrnn.tasks.translation import Translation

TASKS: dict[str, type] = {
    "classification": Classification, "language_model": LanguageModel,
    "regression": Regression, "translation": Translation, "captioning": Captioning,
    "forecasting": Forecasting, "segmentation": Segmentation,
}


def register(name: str, cls: type) -> None:
  """Makes `cls` the task `name` (`config.task.name`).

  Raises:
    ValueError: `cls` is not a dataclass with `model_inputs`, `loss_and_metrics` and
      `metric_names`.
  """
  missing = [a for a in ("model_inputs", "loss_and_metrics", "metric_names")
             if not hasattr(cls, a)]
  if not dataclasses.is_dataclass(cls) or missing:
    raise ValueError(f"task {name!r}: {cls.__name__} must be a dataclass with "
                     f"model_inputs, loss_and_metrics and metric_names (missing: {missing})")
  TASKS[name] = cls


def names() -> list[str]:
  return sorted(TASKS)


def task_class(name: str) -> type:
  """The class of task `name`; raises ValueError listing the known tasks."""
  if name not in TASKS:
    raise ValueError(f"task.name={name!r}; known tasks: {', '.join(names())}")
  return TASKS[name]


def fields(name: str) -> set[str]:
  """The keyword arguments task `name` accepts."""
  return {f.name for f in dataclasses.fields(task_class(name))}


def field_defaults(name: str) -> dict:
  """Field name -> default of task `name` (fields without a default are left out)."""
  return {f.name: f.default for f in dataclasses.fields(task_class(name))
          if f.default is not dataclasses.MISSING}


def metric_names(name: str, values: dict | None = None) -> tuple[str, ...]:
  """Every metric task `name` logs (derived and evaluator metrics included); given its
  `config.task` values, also the names that depend on them (the task's optional
  `metric_names_for(values)`, e.g. segmentation's per-class `iou_c{k}`)."""
  cls = task_class(name)
  names_for = getattr(cls, "metric_names_for", None)
  if values is not None and names_for is not None:
    return tuple(names_for(values))
  return tuple(cls.metric_names)


def check_fields(name: str, values: dict) -> None:
  """Checks `config.task` values of task `name` with its own `check_fields`, if any.

  Raises:
    ValueError: naming `task.FIELD`, its value and the allowed values.
  """
  check = getattr(task_class(name), "check_fields", None)
  if check is not None:
    check(values)


def create(name: str, **kwargs):
  """Builds the task `name`; raises ValueError listing the known tasks or fields."""
  unknown = set(kwargs) - fields(name)
  if unknown:
    raise ValueError(f"task {name!r} has no fields {sorted(unknown)}; its fields: {sorted(fields(name))}")
  return TASKS[name](**kwargs)
