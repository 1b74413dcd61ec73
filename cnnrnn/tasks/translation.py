"""Translation: teacher-forced cross-entropy, then decoding and BLEU at evaluation.

The model is an encoder-decoder called as `model(src, tgt_in, src_lengths=..., train=...)`
-> logits [B, T, V] (teacher forcing), and decodes through `cnnrnn.decode.generate` (the
decoder protocol: `encode`, `init_cache`, `decode_step`). Batches come from
`cnnrnn.data.translation`.

Metrics during training and evaluation are sums over real target tokens (`count` tokens;
padding positions and padding rows weigh nothing): `loss` (the label-smoothed training
objective), `nll` (without smoothing), `accuracy` (teacher-forced next-token accuracy);
`derived_metrics` adds `perplexity` = exp(mean nll).

At evaluation the trainer also runs the task's `evaluator`, which decodes the whole split
(greedy, or beam search with the GNMT length penalty) and scores it with sacreBLEU against
the raw references:

- `bleu`: sacreBLEU's standard corpus BLEU on detokenised, cased text (tokenizer 13a);
  its signature is returned as `bleu_signature` and logged.
- `bleu_tok`: the literature's Multi30k number (e.g. bentrevett/pytorch-seq2seq): BLEU on
  lowercased word tokens, computed by sacreBLEU with tokenize="none". A word model
  (`moses_words`, `spacy_words`) is scored on its own tokens, the reference tokenised the
  same way (the tutorials' protocol); a SentencePiece model's detokenised output and the
  reference on lowercased Moses tokens (`tokenizer.reference_tokens`).
"""

from collections.abc import Callable
import dataclasses
import math

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
import sacrebleu

from cnnrnn import decode
from cnnrnn.data import tokenizers
from cnnrnn.data import translation as tr
from cnnrnn.tasks import base
from cnnrnn.tasks.classification import argmax_correct


def corpus_bleu(hypotheses: list[str], references: list[str]
                ) -> tuple[sacrebleu.metrics.bleu.BLEUScore, str]:
  """sacreBLEU's corpus BLEU of detokenised, cased text (one reference per sentence), and its
  signature (nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...)."""
  metric = sacrebleu.metrics.BLEU()
  score = metric.corpus_score(hypotheses, [references])
  return score, str(metric.get_signature())


def tokenized_bleu(hypotheses: list[str], references: list[str]
                   ) -> sacrebleu.metrics.bleu.BLEUScore:
  """BLEU of already tokenised, lowercased text (tokens separated by spaces), as papers on
  Multi30k report it: sacreBLEU with tokenize="none"."""
  # force=True: the text is tokenised on purpose (it only silences sacreBLEU's warning).
  return sacrebleu.metrics.BLEU(tokenize="none", force=True).corpus_score(hypotheses,
                                                                          [references])


def translation_metrics(hypothesis_ids: list, references: list[str],
                        tokenizer: tokenizers.SentencePiece | tokenizers.WordTokenizer
                        ) -> dict:
  """`bleu`, `bleu_tok` and `bleu_signature` of decoded ids (one [L] array per sentence,
  anything after the first EOS ignored) against the raw `references`."""
  hypotheses = [tokenizer.decode(ids) for ids in hypothesis_ids]
  hyp_tokens = [tokenizer.bleu_tokens(ids) for ids in hypothesis_ids]
  ref_tokens = [tokenizer.reference_tokens(r) for r in references]
  bleu, signature = corpus_bleu(hypotheses, references)
  return {"bleu": bleu.score, "bleu_tok": tokenized_bleu(hyp_tokens, ref_tokens).score,
          "bleu_signature": signature}


@dataclasses.dataclass(frozen=True)
class Translation(base.Decoding):
  """Predict `tgt_out` [B, T] from `src` [B, S] and `tgt_in` [B, T] (teacher forcing).

  Its fields are those of `base.Decoding` (label smoothing and the decoding settings);
  `max_decode_len` None decodes up to the data's `max_length`.
  """

  metric_names = ("loss", "nll", "accuracy", "perplexity", "bleu", "bleu_tok")

  def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
    """(src, tgt_in), {src_lengths}.

    Raises:
      ValueError: the batch is not sentence pairs (the dataset config lacks source_lang).
    """
    if "src" not in batch or "tgt_in" not in batch:
      raise ValueError("task.name='translation' needs batches of sentence pairs: set "
                       "dataset.source_lang and dataset.target_lang (batch keys: "
                       f"{', '.join(sorted(batch))})")
    return (batch["src"], batch["tgt_in"]), {"src_lengths": batch["src_lengths"]}

  def loss_and_metrics(self, logits: jnp.ndarray, batch: dict) -> tuple[jnp.ndarray, dict]:
    """Args:
      logits: [B, T, V].
      batch: `tgt_out` [B, T], `tgt_lengths` [B], optionally `mask` [B] (0: padding row).

    Returns:
      (mean label-smoothed loss per real token, dict of metric sums incl. `count`).
    """
    targets = batch["tgt_out"]
    positions = jnp.arange(targets.shape[1])[None, :]
    weights = (positions < batch["tgt_lengths"][:, None]).astype(jnp.float32)  # [B, T]
    if "mask" in batch:
      weights = weights * batch["mask"].astype(jnp.float32)[:, None]
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if self.label_smoothing:
      onehot = jax.nn.one_hot(targets, logits.shape[-1])
      loss = optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, self.label_smoothing))
    else:
      loss = nll
    count = weights.sum()
    correct = argmax_correct(logits, targets) * weights  # NaN and ties count as wrong.
    metrics = {"loss": (loss * weights).sum(), "nll": (nll * weights).sum(),
               "accuracy": correct.sum(), "count": count}
    return metrics["loss"] / jnp.maximum(count, 1.0), metrics

  @staticmethod
  def derived_metrics(means: dict) -> dict:
    """Perplexity from the mean NLL per token (nats)."""
    return {"perplexity": math.exp(min(means["nll"], 700.0))}

  def decode_fn(self, model, max_decode_len: int) -> Callable:
    """The decoder of these settings, to jit: (variables, src [B, S], src_lengths [B]) ->
    ids [B, max_decode_len] (the best hypothesis; EOS, then padding)."""

    def run(variables, src, src_lengths):
      tokens, _ = decode.generate(model, variables, src, max_len=max_decode_len,
                                  beam_size=self.beam_size, alpha=self.length_penalty,
                                  src_lengths=src_lengths)
      return tokens

    return run

  def evaluator(self, model, streams) -> "TranslationEvaluator":
    """Decodes every sentence of a split once and scores it (`translation_metrics`).

    Args:
      model: the trained encoder-decoder.
      streams: the trainer's `cnnrnn.data.Streams` (its `pairs`: references, tokenisers).
    """
    return TranslationEvaluator(
        self.decode_fn(model, self.max_decode_len or streams.pairs.max_length), streams.pairs)


@dataclasses.dataclass(frozen=True)
class TranslationEvaluator:
  """`cnnrnn.tasks.base.Evaluator` of translation: greedy or beam decoding, then BLEU.

  Attributes:
    decoder: (variables, src [B, S], src_lengths [B]) -> ids [B, L].
    pairs: the sentences of every split (references) and the target tokeniser.
  """

  decoder: Callable
  pairs: tr.TranslationData
  batch_keys = ("src", "src_lengths", "index")

  def predict(self, variables, batch: dict) -> dict:
    return {"tokens": self.decoder(variables, batch["src"], batch["src_lengths"]),
            "index": batch["index"]}

  def score(self, rows: dict, split: str) -> dict:
    """`bleu`, `bleu_tok`, `bleu_signature` of the hypotheses, put back in corpus order.

    Raises:
      ValueError: a sentence of the split was in none of its evaluation batches.
    """
    references = self.pairs.split(split).references
    hypotheses: list = [None] * len(references)
    for ids, i in zip(rows["tokens"], rows["index"]):
      hypotheses[int(i)] = np.asarray(ids)
    missing = sum(h is None for h in hypotheses)
    if missing:
      raise ValueError(f"{missing} of the {len(references)} sentences of split {split!r} "
                       "were not in its evaluation batches")
    metrics = translation_metrics(hypotheses, references, self.pairs.target_tokenizer)
    logging.info("%s: BLEU %.2f (%s), tokenised BLEU %.2f", split, metrics["bleu"],
                 metrics["bleu_signature"], metrics["bleu_tok"])
    return metrics
