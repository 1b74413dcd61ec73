"""What is learned: a loss, metrics and the batch keys, per problem type.

A task has `model_inputs(batch) -> (args, kwargs)` and
`loss_and_metrics(outputs, batch) -> (loss, metric sums incl. "count")`.
"""

from cnnrnn.tasks.classification import Classification

_TASKS = {"classification": Classification}


def names() -> list[str]:
  return sorted(_TASKS)


def create(name: str, **kwargs):
  """Builds the task `name`; raises ValueError listing the known tasks."""
  if name not in _TASKS:
    raise ValueError(f"task.name={name!r}; known tasks: {', '.join(names())}")
  return _TASKS[name](**kwargs)
