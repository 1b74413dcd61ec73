"""The evaluation loops: the loss pass every task gets, and the task's own evaluator.

A split is evaluated by `Evaluation`: first the loss pass (`eval_step` over every
batch, metric sums turned into means, plus the task's `derived_metrics`), then, for a
task with an `evaluator` (`cnnrnn.tasks.base.Evaluator`: decoding, BLEU), the
generation pass, whose loop is `generation_pass` here for every task.
"""

from collections.abc import Callable, Iterable
import dataclasses
from typing import Any

import jax
import numpy as np

from cnnrnn.train import sharding


def sum_metrics(metric_list: list[dict]) -> dict:
  """The sums of metric dicts (host values), key by key."""
  return {k: float(np.sum([m[k] for m in metric_list])) for k in metric_list[0]}


def means(sums: dict) -> dict:
  """Metric sums -> per-example means, plus the number of examples."""
  count = max(sums.get("count", 1.0), 1.0)
  return {k: v / count for k, v in sums.items() if k not in ("count", "grad_norm")} | {
      "num_examples": int(sums.get("count", 0))}


def loss_pass(eval_step, state, mesh, batches: Iterable[dict], carry=None) -> dict:
  """Runs `eval_step` over `batches` (each example exactly once) and returns means.

  `carry` is a stateful model's initial carry, passed from each batch to the next.
  """
  sums = None
  for batch in batches:
    m, carry = eval_step(state, sharding.global_batch(mesh, batch), carry)
    m = jax.device_get(m)
    sums = m if sums is None else jax.tree.map(np.add, sums, m)
  return means({k: float(v) for k, v in sums.items()})


def generation_pass(evaluator, mesh) -> Callable[[Any, Iterable[dict], str], dict]:
  """The loop of a task's `Evaluator`: `run(state, batches, split) -> metrics`.

  `evaluator.predict` is jitted once (compiled once per batch shape); its outputs and the
  batch's `mask` are replicated, so every process receives every row of the split.
  """
  keys = (*evaluator.batch_keys, "mask")
  predict = jax.jit(lambda variables, batch: (evaluator.predict(variables, batch), batch["mask"]),
                    out_shardings=sharding.replicated(mesh))

  def run(state, batches: Iterable[dict], split: str) -> dict:
    variables = {"params": state.params, **state.model_state}
    rows: dict[str, list[np.ndarray]] = {}
    for batch in batches:
      outputs, mask = jax.device_get(
          predict(variables, sharding.global_batch(mesh, {k: batch[k] for k in keys})))
      for name, values in outputs.items():
        rows.setdefault(name, []).extend(values[mask == 1])
    return evaluator.score(rows, split)

  return run


@dataclasses.dataclass
class Evaluation:
  """Evaluates a split: the loss pass, derived metrics, then the task's evaluator.

  Attributes:
    eval_step: the jitted `(state, batch, carry) -> (metric sums, carry)`.
    task: the task (for `derived_metrics`).
    mesh: the device mesh.
    eval_batches: split name -> one pass over the split.
    carry: a stateful model's initial evaluation carry, else None.
    generation: `generation_pass` of the task's evaluator, else None.
  """

  eval_step: Callable
  task: Any
  mesh: jax.sharding.Mesh
  eval_batches: Callable[[str], Iterable[dict]]
  carry: Any = None
  generation: Callable | None = None

  @classmethod
  def create(cls, eval_step, task, model, streams, mesh, carry=None) -> "Evaluation":
    """The evaluation of `task` on `streams` (its evaluator built when it has one)."""
    generation = (generation_pass(task.evaluator(model, streams), mesh)
                  if hasattr(task, "evaluator") else None)
    return cls(eval_step, task, mesh, streams.eval_batches, carry, generation)

  def __call__(self, state, split: str) -> dict:
    """The metrics of `split` (means, derived metrics, the evaluator's metrics)."""
    result = loss_pass(self.eval_step, state, self.mesh, self.eval_batches(split), self.carry)
    if hasattr(self.task, "derived_metrics"):
      result |= self.task.derived_metrics(result)
    if self.generation is not None:
      result |= self.generation(state, self.eval_batches(split), split)
    return result
