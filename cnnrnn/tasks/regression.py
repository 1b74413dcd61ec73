"""Regression: mean squared error (e.g. the adding problem)."""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Regression:
  """Predict real-valued `batch[target_key]` [B, ...] from `batch[input_key]`.

  Metrics (sums over real examples, with `count`): `loss` and `mse`, the squared error
  averaged over each example's output values. `seq_lengths` in the batch is passed on to
  the model.
  """

  input_key: str = "inputs"
  target_key: str = "targets"

  metric_names = ("loss", "mse")

  def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
    kwargs = {"seq_lengths": batch["seq_lengths"]} if "seq_lengths" in batch else {}
    return (batch[self.input_key],), kwargs

  def loss_and_metrics(self, outputs: jnp.ndarray, batch: dict) -> tuple[jnp.ndarray, dict]:
    """Args: outputs: predictions shaped like the targets. Returns: (mean loss, sums)."""
    targets = batch[self.target_key]
    if outputs.shape != targets.shape:
      raise ValueError(f"model output {outputs.shape} does not match targets {targets.shape}")
    mask = batch.get("mask", jnp.ones(targets.shape[:1], jnp.float32))
    err = (outputs.astype(jnp.float32) - targets) ** 2
    per_example = err.reshape(err.shape[0], -1).mean(axis=1)
    count = mask.sum()
    total = (per_example * mask).sum()
    return total / jnp.maximum(count, 1.0), {"loss": total, "mse": total, "count": count}
