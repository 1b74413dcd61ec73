"""Forecasting: predict the next `horizon` steps of a series from a window of its past.

Batches come from the forecasting datasets (`cnnrnn.data.builders.time_series`): `inputs`
[B, C, F], `targets` [B, H, F], `naive` [B, H, F] (the seasonal-naive forecast) and
`mase_scale` [B, F], all in units of the training part's standard deviation.

Two ways to forecast H steps:

- direct (`autoregressive=False`): the model reads the context once and outputs all H x F
  values ([B, H * F] or [B, H, F], e.g. `rnn_classifier` with `num_outputs = H * F`).
- autoregressive (`autoregressive=True`): the model outputs the next step ([B, F] or
  [B, 1, F]); it is trained on one-step-ahead targets (teacher forcing, the first target
  step), and evaluated by feeding its own forecasts back H times (the window slides by one
  step each time). The losses reported in training are then one-step losses; evaluation
  scores the H-step forecasts.

Metrics (means over examples of each example's mean over its H x F values):

- `mse`, `mae`: in units of the training part's standard deviation (so `nrmse` =
  sqrt(mse) is the RMSE divided by that standard deviation, the NRMSE of Gers et al. 2001
  up to using the training part's deviation rather than the test part's);
- `mase`: the absolute error divided by the in-sample mean absolute seasonal difference of
  the training part (Hyndman & Koehler 2006; below 1: better than the seasonal-naive
  forecast in the training part);
- `last_mse`, `last_nrmse`: the same for the last step (t + H) alone, the one a single
  "T_p steps ahead" figure (Gers et al. 2001) reports;
- `naive_*`: the same metrics of the seasonal-naive forecast on the same windows, the
  baseline beside every number.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from cnnrnn.tasks import base

Array = jax.Array


def error_sums(forecast: Array, batch: dict, mask: Array, prefix: str = "") -> dict:
  """Metric sums of `forecast` [B, H, F] against `batch["targets"]` over the real examples."""
  err = forecast.astype(jnp.float32) - batch["targets"]
  flat = lambda a: a.reshape(a.shape[0], -1).mean(axis=1)  # per example: [B]
  scaled = jnp.abs(err) / jnp.maximum(batch["mase_scale"][:, None, :], 1e-12)
  return {f"{prefix}mse": (flat(err ** 2) * mask).sum(),
          f"{prefix}mae": (flat(jnp.abs(err)) * mask).sum(),
          f"{prefix}mase": (flat(scaled) * mask).sum(),
          f"{prefix}last_mse": (flat(err[:, -1:] ** 2) * mask).sum()}


@dataclasses.dataclass(frozen=True)
class Forecasting(base.CheckedFields):
  """Predict `batch[target_key]` [B, H, F] from `batch[input_key]` [B, C, F] (module docstring).

  Attributes:
    loss: the training loss, "mse" or "mae".
    autoregressive: one-step model rolled out H times at evaluation (module docstring).
    input_key: batch key of the context window.
    target_key: batch key of the future values.
  """

  loss: str = "mse"
  autoregressive: bool = False
  input_key: str = "inputs"
  target_key: str = "targets"

  LOSSES: ClassVar[tuple[str, ...]] = ("mse", "mae")
  metric_names = tuple(f"{p}{m}" for p in ("", "naive_") for m in (
      "mse", "mae", "nrmse", "mase", "last_mse", "last_nrmse")) + (
          "loss", "rollout_mse", "rollout_mae", "rollout_nrmse", "rollout_mase")

  @classmethod
  def check_fields(cls, values: dict) -> None:
    if "loss" in values:
      base.require("loss", values["loss"], lambda v: v in cls.LOSSES, ", ".join(cls.LOSSES))

  def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
    return (batch[self.input_key],), {}

  def _as_forecast(self, outputs: Array, targets: Array) -> Array:
    """outputs [B, H*F] or [B, H, F] (one step: [B, F] or [B, 1, F]) -> [B, H', F]."""
    b, h, f = targets.shape
    steps = 1 if self.autoregressive else h
    if outputs.size != b * steps * f:
      raise ValueError(f"model output {outputs.shape} does not hold {steps} step(s) of {f} "
                       f"feature(s) per example; set the model's output size to "
                       f"{steps * f} (horizon x features{', one step' if steps == 1 else ''})")
    return outputs.reshape(b, steps, f)

  def loss_and_metrics(self, outputs: Array, batch: dict) -> tuple[Array, dict]:
    """Args:
      outputs: the model's forecast (module docstring).
      batch: `targets`, `naive`, `mase_scale` and optionally `mask` [B] (1 real, 0 padding).

    Returns:
      (mean training loss over real examples, metric sums incl. `count`).
    """
    targets = batch[self.target_key]
    mask = batch.get("mask", jnp.ones(targets.shape[:1], jnp.float32))
    forecast = self._as_forecast(outputs, targets)
    step_batch = dict(batch, targets=targets[:, :forecast.shape[1]])
    sums = error_sums(forecast, step_batch, mask)
    count = mask.sum()
    total = sums[self.loss]
    naive = error_sums(batch["naive"], {**batch, "targets": targets}, mask, prefix="naive_")
    return total / jnp.maximum(count, 1.0), {"loss": total, **sums, **naive, "count": count}

  def derived_metrics(self, means: dict) -> dict:
    """nrmse = sqrt(mse), for the model and the seasonal-naive forecast."""
    out = {}
    for prefix in ("", "naive_"):
      for mse in ("mse", "last_mse"):
        if f"{prefix}{mse}" in means:
          out[f"{prefix}{mse[:-3]}nrmse"] = float(means[f"{prefix}{mse}"]) ** 0.5
    return out

  @property
  def evaluator(self):
    """`evaluator(model, streams)`: the H-step rollout of an autoregressive task.

    A direct task has none (the loss pass scores its forecasts): the attribute is then
    missing, as the trainer's `hasattr` check expects.
    """
    if not self.autoregressive:
      raise AttributeError("a direct forecasting task has no evaluator")
    return lambda model, streams: RolloutEvaluator(self, model)


def rollout(apply_fn, context: Array, horizon: int) -> Array:
  """Feeds a one-step forecaster its own forecasts: [B, C, F] -> [B, horizon, F].

  Args:
    apply_fn: context [B, C, F] -> next step ([B, F] or [B, 1, F]).
    context: the observed window.
    horizon: steps to forecast.
  """
  b, _, f = context.shape

  def step(window, _):
    nxt = apply_fn(window).reshape(b, 1, f).astype(window.dtype)
    return jnp.concatenate([window[:, 1:], nxt], axis=1), nxt[:, 0]

  _, steps = jax.lax.scan(step, context, None, length=horizon)  # [H, B, F]
  return jnp.swapaxes(steps, 0, 1)


@dataclasses.dataclass(frozen=True)
class RolloutEvaluator:
  """`cnnrnn.tasks.base.Evaluator` of autoregressive forecasting: H-step rollouts, scored
  with the task's metrics (`rollout_mse`, `rollout_mae`, `rollout_mase`, `rollout_nrmse`)."""

  task: Forecasting
  model: object

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return (self.task.input_key, self.task.target_key, "mase_scale")

  def predict(self, variables, batch: dict) -> dict:
    context, targets = batch[self.task.input_key], batch[self.task.target_key]
    forecast = rollout(lambda w: self.model.apply(variables, w, train=False), context,
                       targets.shape[1])
    err = forecast - targets  # per-row means; the trainer keeps the real rows
    return {"sq": (err ** 2).reshape(err.shape[0], -1).mean(axis=1),
            "abs": jnp.abs(err).reshape(err.shape[0], -1).mean(axis=1),
            "scaled": (jnp.abs(err) / jnp.maximum(batch["mase_scale"][:, None, :], 1e-12)
                       ).reshape(err.shape[0], -1).mean(axis=1)}

  def score(self, rows: dict, split: str) -> dict:
    del split
    n = max(len(rows.get("sq", [])), 1)
    mse = float(sum(rows.get("sq", []))) / n
    return {"rollout_mse": mse, "rollout_nrmse": mse ** 0.5,
            "rollout_mae": float(sum(rows.get("abs", []))) / n,
            "rollout_mase": float(sum(rows.get("scaled", []))) / n}
