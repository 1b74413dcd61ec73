"""Translation: teacher-forced cross-entropy, then decoding and BLEU at evaluation.

The model is an encoder-decoder called as `model(src, tgt_in, src_lengths=..., train=...)`
-> logits [B, T, V] (teacher forcing), and decodes through `cnnrnn.decode.generate` (the
decoder protocol: `encode`, `init_cache`, `decode_step`). Batches come from
`cnnrnn.data.translation`.

Metrics during training and evaluation are sums over real target tokens (`count` tokens;
padding positions and padding rows weigh nothing): `loss` (the label-smoothed training
objective), `nll` (without smoothing), `accuracy` (teacher-forced next-token accuracy);
`derived_metrics` adds `perplexity` = exp(mean nll).

At evaluation the trainer also calls the evaluator of `generation_evaluator`, which decodes
the whole split (greedy, or beam search with the GNMT length penalty) and scores it with
sacreBLEU against the raw references:

- `bleu`: sacreBLEU's standard corpus BLEU on detokenised, cased text (tokenizer 13a);
  its signature is returned as `bleu_signature` and logged.
- `bleu_tok`: the literature's Multi30k number (e.g. bentrevett/pytorch-seq2seq): BLEU on
  lowercased word tokens, computed by sacreBLEU with tokenize="none". A word model
  (`moses_words`, `spacy_words`) is scored on its own tokens, the reference tokenised the
  same way (the tutorials' protocol); a SentencePiece model's detokenised output and the
  reference on lowercased Moses tokens (`tokenizer.reference_tokens`).
"""

from collections.abc import Callable, Iterable
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
class Translation:
  """Predict `tgt_out` [B, T] from `src` [B, S] and `tgt_in` [B, T] (teacher forcing).

  Attributes:
    label_smoothing: mass spread uniformly over the vocabulary in the training target
      (Szegedy et al. 2016; the Transformer paper uses 0.1).
    beam_size: 1 decodes greedily at evaluation, K > 1 with a beam of K.
    max_decode_len: most tokens generated per sentence, EOS included (None: the data's
      `max_length`).
    length_penalty: alpha of the GNMT length penalty ((5 + len) / 6) ** alpha (beam only).
  """

  label_smoothing: float = 0.0
  beam_size: int = 1
  max_decode_len: int | None = None
  length_penalty: float = 0.6

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"task.label_smoothing={self.label_smoothing}; allowed: [0, 1)")
    if not isinstance(self.beam_size, int) or self.beam_size < 1:
      raise ValueError(f"task.beam_size={self.beam_size!r}; allowed: an integer >= 1")
    if self.max_decode_len is not None and self.max_decode_len < 1:
      raise ValueError(f"task.max_decode_len={self.max_decode_len}; allowed: None or >= 1")
    if self.length_penalty < 0:
      raise ValueError(f"task.length_penalty={self.length_penalty}; allowed: >= 0")

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
    correct = (jnp.argmax(logits, axis=-1) == targets) * weights
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

  def generation_evaluator(self, model, pairs: tr.TranslationData, mesh) -> Callable:
    """Returns `evaluate(state, batches, split) -> {"bleu", "bleu_tok", "bleu_signature"}`,
    which decodes every sentence of `split` once (the rows of `batches` whose `mask` is 1)
    with one jitted decoder (compiled once per padded source length)."""
    # Imported here: cnnrnn.train imports the tasks.
    from cnnrnn.train import sharding  # pylint: disable=g-import-not-at-top

    decoder = self.decode_fn(model, self.max_decode_len or pairs.max_length)
    # Every process receives every decoded row (a multi-host run scores the whole split).
    run = jax.jit(lambda variables, b: (decoder(variables, b["src"], b["src_lengths"]),
                                        b["index"], b["mask"]),
                  out_shardings=sharding.replicated(mesh))

    def evaluate(state, batches: Iterable[dict], split: str) -> dict:
      references = pairs.split(split).references
      hypotheses: list = [None] * len(references)
      variables = {"params": state.params, **state.model_state}
      for batch in batches:
        keys = ("src", "src_lengths", "index", "mask")
        tokens, index, mask = jax.device_get(
            run(variables, sharding.global_batch(mesh, {k: batch[k] for k in keys})))
        for ids, i in zip(tokens[mask == 1], index[mask == 1]):
          hypotheses[int(i)] = np.asarray(ids)
      missing = sum(h is None for h in hypotheses)
      if missing:
        raise ValueError(f"{missing} of the {len(references)} sentences of split {split!r} "
                         "were not in its evaluation batches")
      metrics = translation_metrics(hypotheses, references, pairs.target_tokenizer)
      logging.info("%s: BLEU %.2f (%s), tokenised BLEU %.2f", split, metrics["bleu"],
                   metrics["bleu_signature"], metrics["bleu_tok"])
      return metrics

    return evaluate
