"""Captioning: teacher-forced cross-entropy plus the doubly stochastic attention regulariser;
at evaluation, decoded exact-match accuracy and BLEU (sacreBLEU).

The model is called as `model(images, tgt_in, train=..., return_attention=True)` ->
(logits [B, T, V], alpha [B, T, L] or None) and decodes through `cnnrnn.decode.generate`
(`cnnrnn.models.Captioner`). Batches hold the images and `caption` [B, C] token ids (pad 0
after the caption, no bos/eos); the task builds tgt_in = [bos, caption] and
tgt_out = [caption, eos] (ids of `cnnrnn.decode`: pad 0, bos 2, eos 3).

Training loss per target token (the eos included, padding excluded):

    (sum_t CE_t + lambda * sum_b sum_i (1 - sum_t alpha_bti)^2) / #tokens

where the regulariser (Xu et al. 2015, eq. 14) pushes every image location to receive
about one unit of attention over the whole caption. Metrics are sums over tokens: `loss`,
`nll`, `accuracy` (teacher-forced next-token), `attention_penalty` (the regulariser without
lambda); `derived_metrics` adds `perplexity`.

At evaluation the trainer also runs the task's `evaluator`, which decodes every image of
the split once (greedy, or beam search with the GNMT length penalty) and returns
`exact_match` (the fraction of captions generated exactly, up to the eos) and `bleu`: sacreBLEU's corpus BLEU with tokenize="none" over the
token ids written as words (one id per word, so this is the word-level BLEU of the
captions, whatever the vocabulary).
"""

from collections.abc import Callable
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sacrebleu

from cnnrnn import decode
from cnnrnn.tasks import base
from cnnrnn.tasks.classification import argmax_correct


def caption_tokens(ids, eos_id: int = decode.EOS_ID, pad_id: int = decode.PAD_ID) -> list[int]:
  """The tokens of a caption or a hypothesis: up to the first eos, without padding."""
  out = []
  for i in np.asarray(ids).tolist():
    if i == eos_id:
      break
    if i != pad_id:
      out.append(int(i))
  return out


def caption_metrics(hypotheses: list, references: list) -> dict:
  """`exact_match` and `bleu` of decoded ids against reference ids (one [L] each)."""
  hyp = [caption_tokens(h) for h in hypotheses]
  ref = [caption_tokens(r) for r in references]
  exact = float(np.mean([h == r for h, r in zip(hyp, ref)])) if ref else 0.0
  words = lambda tokens: " ".join(f"w{t}" for t in tokens)
  bleu = sacrebleu.metrics.BLEU(tokenize="none").corpus_score(
      [words(h) for h in hyp], [[words(r) for r in ref]])
  return {"exact_match": exact, "bleu": bleu.score}


@dataclasses.dataclass(frozen=True)
class Captioning(base.Decoding):
  """Generate `batch[caption_key]` from `batch[input_key]`.

  Attributes (besides those of `base.Decoding`; `max_decode_len` None decodes up to the
  reference captions' length + 1):
    attention_penalty: lambda of the doubly stochastic regulariser (0: none; Xu et al. 1).
    input_key: batch key of the images.
    caption_key: batch key of the captions.
  """

  attention_penalty: float = 1.0
  input_key: str = "image"
  caption_key: str = "caption"

  metric_names = ("loss", "nll", "accuracy", "attention_penalty", "perplexity",
                  "exact_match", "bleu")

  @classmethod
  def check_fields(cls, values: dict) -> None:
    super().check_fields(values)
    if "attention_penalty" in values:
      base.require("attention_penalty", values["attention_penalty"], base.is_non_negative, ">= 0")

  def targets(self, captions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """captions [B, C] -> (tgt_in [B, C + 1], tgt_out [B, C + 1], weights [B, C + 1])."""
    b = captions.shape[0]
    captions = captions.astype(jnp.int32)
    lengths = (captions != decode.PAD_ID).sum(axis=1)  # [B]
    tgt_in = jnp.concatenate([jnp.full((b, 1), decode.BOS_ID, jnp.int32), captions], axis=1)
    padded = jnp.concatenate([captions, jnp.full((b, 1), decode.PAD_ID, jnp.int32)], axis=1)
    positions = jnp.arange(padded.shape[1])[None, :]
    tgt_out = jnp.where(positions == lengths[:, None], decode.EOS_ID, padded)
    weights = (positions <= lengths[:, None]).astype(jnp.float32)
    return tgt_in, tgt_out, weights

  def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
    """(images, tgt_in), {return_attention: True}.

    Raises:
      ValueError: the batches have no captions.
    """
    if self.caption_key not in batch:
      raise ValueError(f"task.name='captioning' needs batches with {self.caption_key!r} "
                       f"(task.caption_key); batch keys: {', '.join(sorted(batch))}")
    tgt_in, _, _ = self.targets(batch[self.caption_key])
    return (batch[self.input_key], tgt_in), {"return_attention": True}

  def loss_and_metrics(self, outputs, batch: dict) -> tuple[jnp.ndarray, dict]:
    """Args:
      outputs: (logits [B, T, V], alpha [B, T, L] or None).
      batch: the captions and optionally `mask` [B] (0: padding row).

    Returns:
      (the training loss per real token, dict of metric sums incl. `count`).
    """
    logits, alpha = outputs
    _, targets, weights = self.targets(batch[self.caption_key])
    if "mask" in batch:
      weights = weights * batch["mask"].astype(jnp.float32)[:, None]
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]
    if self.label_smoothing:
      onehot = jax.nn.one_hot(targets, logits.shape[-1])
      loss = optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, self.label_smoothing))
    else:
      loss = nll
    if alpha is None:
      penalty = jnp.zeros(())
    else:  # sum_i (1 - sum_t alpha_ti)^2 per caption, over its real steps.
      attention = jnp.einsum("btl,bt->bl", alpha.astype(jnp.float32), weights)  # [B, L]
      row = (weights.max(axis=1) > 0).astype(jnp.float32)  # real rows only
      penalty = (((1.0 - attention) ** 2).sum(axis=1) * row).sum()
    count = weights.sum()
    correct = argmax_correct(logits, targets) * weights  # NaN and ties count as wrong.
    total = (loss * weights).sum() + self.attention_penalty * penalty
    metrics = {"loss": total, "nll": (nll * weights).sum(), "accuracy": correct.sum(),
               "attention_penalty": penalty, "count": count}
    return total / jnp.maximum(count, 1.0), metrics

  @staticmethod
  def derived_metrics(means: dict) -> dict:
    """Perplexity from the mean NLL per token (nats)."""
    return {"perplexity": math.exp(min(means["nll"], 700.0))}

  def decode_fn(self, model, max_decode_len: int) -> Callable:
    """(variables, images [B, H, W, C]) -> ids [B, max_decode_len] (eos, then padding)."""

    def run(variables, images):
      tokens, _ = decode.generate(model, variables, images, max_len=max_decode_len,
                                  beam_size=self.beam_size, alpha=self.length_penalty)
      return tokens

    return run

  def evaluator(self, model, streams) -> "CaptionEvaluator":
    """Decodes every image of a split once; scores `exact_match` and `bleu`.

    The references are the batches' own captions (`streams` is unused).
    """
    del streams
    return CaptionEvaluator(self, model)


@dataclasses.dataclass(frozen=True)
class CaptionEvaluator:
  """`cnnrnn.tasks.base.Evaluator` of captioning: decode, then `caption_metrics`."""

  task: Captioning
  model: Any

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return (self.task.input_key, self.task.caption_key)

  def predict(self, variables, batch: dict) -> dict:
    captions = batch[self.task.caption_key]
    max_len = self.task.max_decode_len or captions.shape[1] + 1
    decoder = self.task.decode_fn(self.model, max_len)
    return {"tokens": decoder(variables, batch[self.task.input_key]), "reference": captions}

  def score(self, rows: dict, split: str) -> dict:
    del split
    return caption_metrics(rows["tokens"], rows["reference"])
