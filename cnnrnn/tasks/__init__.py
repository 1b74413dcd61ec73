"""What is learned: a loss, metrics and the batch keys, per problem type.

A task has `model_inputs(batch) -> (args, kwargs)` and
`loss_and_metrics(outputs, batch) -> (loss, metric sums incl. "count")`; optionally
`derived_metrics(means) -> more means` (e.g. perplexity from the mean loss) and
`stateful = True` when batches are contiguous streams and the model carries a recurrent
state across them (language models; the model then follows `cnnrnn.models.stateful`);
`generation_evaluator(model, pairs, mesh) -> evaluate(state, batches, split) -> metrics`
for tasks scored on generated outputs (translation: decoding and BLEU).
"""

import dataclasses

from cnnrnn.tasks.classification import Classification
from cnnrnn.tasks.language_model import LanguageModel
from cnnrnn.tasks.regression import Regression
from cnnrnn.tasks.translation import Translation

_TASKS = {"classification": Classification, "language_model": LanguageModel,
          "regression": Regression, "translation": Translation}


def names() -> list[str]:
  return sorted(_TASKS)


def task_class(name: str) -> type:
  """The class of task `name`; raises ValueError listing the known tasks."""
  if name not in _TASKS:
    raise ValueError(f"task.name={name!r}; known tasks: {', '.join(names())}")
  return _TASKS[name]


def fields(name: str) -> set[str]:
  """The keyword arguments task `name` accepts."""
  return {f.name for f in dataclasses.fields(task_class(name))}


def create(name: str, **kwargs):
  """Builds the task `name`; raises ValueError listing the known tasks or fields."""
  unknown = set(kwargs) - fields(name)
  if unknown:
    raise ValueError(f"task {name!r} has no fields {sorted(unknown)}; its fields: {sorted(fields(name))}")
  return _TASKS[name](**kwargs)
