"""What is learned: a loss, metrics and the batch keys, per problem type.

A task has `model_inputs(batch) -> (args, kwargs)` and
`loss_and_metrics(outputs, batch) -> (loss, metric sums incl. "count")`.
"""

import dataclasses

from cnnrnn.tasks.classification import Classification
from cnnrnn.tasks.regression import Regression

_TASKS = {"classification": Classification, "regression": Regression}


def names() -> list[str]:
  return sorted(_TASKS)


def fields(name: str) -> set[str]:
  """The keyword arguments task `name` accepts."""
  return {f.name for f in dataclasses.fields(_TASKS[name])}


def create(name: str, **kwargs):
  """Builds the task `name`; raises ValueError listing the known tasks or fields."""
  if name not in _TASKS:
    raise ValueError(f"task.name={name!r}; known tasks: {', '.join(names())}")
  unknown = set(kwargs) - fields(name)
  if unknown:
    raise ValueError(f"task {name!r} has no fields {sorted(unknown)}; its fields: {sorted(fields(name))}")
  return _TASKS[name](**kwargs)
