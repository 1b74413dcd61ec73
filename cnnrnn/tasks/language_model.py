"""Language modelling: next-token cross-entropy, perplexity and bits per token.

The model is recurrent and stateful across batches (truncated BPTT over contiguous
streams, `cnnrnn.data.text`): a `cnnrnn.models.stateful` model, called with `carry=` and
returning `(final_carry, logits)`; the trainer keeps the carry in the train state, passes
it to the next batch and zeroes the rows whose `reset` flag is set.
"""

import dataclasses
import math

import jax.numpy as jnp
import optax

from cnnrnn.tasks import base
from cnnrnn.tasks.classification import argmax_correct


@dataclasses.dataclass(frozen=True)
class LanguageModel(base.CheckedFields):
  """Predict `batch[target_key]` [B, T] from `batch[input_key]` [B, T].

  Metric sums are over real target tokens (`mask` 1; padding weighs nothing), with
  `count` the number of tokens, so `loss` means nats per token; `derived_metrics` adds
  `perplexity` = exp(loss) and `bits_per_token` = loss / ln 2 (bits per character for a
  character model) to the means.

  Attributes:
    input_key: batch key of the input token ids.
    target_key: batch key of the target (next) token ids.
    average_over: what the training loss averages the summed NLL over: "tokens" (the
      mean per token), or "rows" (summed over the T steps of each row, averaged over the
      batch rows, as Zaremba et al.'s code does: gradients T times larger than with
      "tokens", so their learning rate 1 and clipping norm 5 mean what they meant there).
      Only the training loss changes; the logged metrics are per token either way.
  """

  input_key: str = "inputs"
  target_key: str = "targets"
  average_over: str = "tokens"

  # Batches are contiguous streams and the model must be `cnnrnn.models.stateful`.
  stateful = True

  metric_names = ("loss", "accuracy", "perplexity", "bits_per_token")

  @classmethod
  def check_fields(cls, values: dict) -> None:
    if "average_over" in values:
      base.require("average_over", values["average_over"], lambda v: v in ("tokens", "rows"),
                   "'tokens', 'rows'")

  def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
    return (batch[self.input_key],), {}

  def loss_and_metrics(self, logits: jnp.ndarray, batch: dict) -> tuple[jnp.ndarray, dict]:
    """Args:
      logits: [B, T, V].
      batch: with targets [B, T] int and optionally `mask` [B, T] (1 real, 0 padding).

    Returns:
      (training loss (see `average_over`), dict of metric sums incl. `count`).
    """
    targets = batch[self.target_key]
    mask = batch.get("mask", jnp.ones(targets.shape, jnp.float32)).astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = mask.sum()
    nll_sum = (nll * mask).sum()
    correct = argmax_correct(logits, targets) * mask  # NaN and ties count as wrong.
    metrics = {"loss": nll_sum, "accuracy": correct.sum(), "count": count}
    if self.average_over == "rows":
      return nll_sum / targets.shape[0], metrics
    return nll_sum / jnp.maximum(count, 1.0), metrics

  @staticmethod
  def derived_metrics(means: dict) -> dict:
    """Perplexity and bits per token from the mean NLL (nats)."""
    loss = means["loss"]
    return {"perplexity": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2.0)}
