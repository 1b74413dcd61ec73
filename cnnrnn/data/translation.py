"""Sentence pairs for translation: tokenised splits and bucketed batches.

The tokenisers (SentencePiece, or lowercased Moses or spaCy words; ids pad 0, unk 1, bos 2,
eos 3) are in `cnnrnn.data.tokenizers`; this module trains or finds them for a
`config.dataset` block (`load_tokenizers`), storing them in `tokenizers/` beside the
prepared data, and reads every split as pairs of ids (`load_pairs`).

Batches (dicts of numpy arrays; B rows, padded with 0 to a length L that is a multiple of
`bucket_width`, one L for source and target so that each L is one compilation):

  src:         [B, L] int32, source ids (no BOS/EOS)
  src_lengths: [B] int32
  tgt_in:      [B, L] int32, BOS + target ids (the decoder's teacher-forced inputs)
  tgt_out:     [B, L] int32, target ids + EOS (what the decoder predicts)
  tgt_lengths: [B] int32, target ids + 1
  mask:        [B] float32, 1 on real rows, 0 on padding rows
  index:       [B] int32, the example's position in its split (to find its reference)

Training batches are "sortish" (as fairseq's and tensor2tensor's bucketing): each epoch is
a fresh permutation, cut into pools of `bucket_pool` batches; a pool is sorted by length and
cut into batches, and the batches of the epoch are shuffled. Every example appears exactly
once per epoch; the last batch of an epoch is filled up with padding rows (`mask` 0).
Evaluation batches sort the split by length once and see every example exactly once. With
several processes the batch plan is global and process p reads rows [p B / P, (p + 1) B / P)
of each batch, so every process pads to the same L.
"""

from collections.abc import Iterator, Sequence
import dataclasses
import functools
import math
import os

import grain
import numpy as np

from cnnrnn.data import pipeline
from cnnrnn.data import tokenizers
from cnnrnn.data.options import Option
from cnnrnn.data.tokenizers import BOS_ID, EOS_ID, SentencePiece, TokenizerConfig, WordTokenizer

# `config.dataset` fields read here (cnnrnn.data.options), besides the tokenisers'.
CONFIG_OPTIONS = {"source_lang": Option(str), "target_lang": Option(str),
                  "max_length": Option(int, minimum=2), "tokenizer_dir": Option(str),
                  **tokenizers.CONFIG_OPTIONS}


# -- Encoded splits ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PairedSplit:
  """One split as token ids, with its raw text.

  Attributes:
    src, tgt: per example, ids [S_i] and [T_i] int32 (truncated to the maximum length).
    sources, references: per example, the raw source and target sentences.
  """

  src: list[np.ndarray] = dataclasses.field(repr=False)
  tgt: list[np.ndarray] = dataclasses.field(repr=False)
  sources: list[str] = dataclasses.field(repr=False)
  references: list[str] = dataclasses.field(repr=False)

  def __len__(self) -> int:
    return len(self.src)

  @functools.cached_property
  def lengths(self) -> np.ndarray:
    """[N] int: the padded length each example needs, max(S_i, T_i + 1)."""
    return np.array([max(len(s), len(t) + 1) for s, t in zip(self.src, self.tgt)], np.int64)


def encode_split(sources: Sequence[str], references: Sequence[str], source_tokenizer,
                 target_tokenizer, max_length: int) -> PairedSplit:
  """Tokenises sentence pairs; sources keep <= max_length ids, targets <= max_length - 1
  (so that BOS + target and target + EOS fit in max_length)."""
  src = [source_tokenizer.encode(s)[:max_length] for s in sources]
  tgt = [target_tokenizer.encode(t)[: max_length - 1] for t in references]
  return PairedSplit(src, tgt, list(sources), list(references))


def make_batch(split: PairedSplit, indices, num_real: int, length: int) -> dict:
  """The batch (see the module doc) of examples `indices`, the first `num_real` of them real
  (the others padding rows, `mask` 0), padded to `length`."""
  n = len(indices)
  batch = {k: np.zeros((n, length), np.int32) for k in ("src", "tgt_in", "tgt_out")}
  batch["src_lengths"] = np.zeros(n, np.int32)
  batch["tgt_lengths"] = np.zeros(n, np.int32)
  for row, i in enumerate(indices):
    s, t = split.src[i], split.tgt[i]
    batch["src"][row, : len(s)] = s
    batch["tgt_in"][row, 0] = BOS_ID
    batch["tgt_in"][row, 1 : len(t) + 1] = t
    batch["tgt_out"][row, : len(t)] = t
    batch["tgt_out"][row, len(t)] = EOS_ID
    batch["src_lengths"][row], batch["tgt_lengths"][row] = len(s), len(t) + 1
  batch["mask"] = (np.arange(n) < num_real).astype(np.float32)
  batch["index"] = np.asarray(indices, np.int32)
  return batch


def padded_length(n: int, bucket_width: int, max_length: int) -> int:
  """`n` rounded up to a multiple of `bucket_width`, at most `max_length`."""
  return min(-(-max(n, 1) // bucket_width) * bucket_width, max_length)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Global batch plan rows: example indices [B] and how many of them are real."""

  indices: np.ndarray
  num_real: int


def _chunk(order: np.ndarray, batch_size: int) -> list[_Plan]:
  """`order` cut into batches; the last one filled up with copies of its first example."""
  plans = []
  for start in range(0, len(order), batch_size):
    idx = order[start : start + batch_size]
    n = len(idx)
    plans.append(_Plan(np.concatenate([idx, np.full(batch_size - n, idx[0])]), n))
  return plans


class TrainBatches:
  """Training batch b, for any b >= 0: batch b % len(self) of epoch b // len(self).

  Args:
    split: the encoded training split.
    global_batch_size: B, sentences per global batch.
    seed: the shuffling seed (an epoch's order depends on seed and epoch only).
    max_length, bucket_width: batches are padded to a multiple of bucket_width, at most
      max_length.
    bucket_pool: batches per length-sorted pool (1: no bucketing, the plain shuffle).
    process_index, process_count: this process's rows of each global batch.
  """

  def __init__(self, split: PairedSplit, *, global_batch_size: int, seed: int, max_length: int,
               bucket_width: int = 8, bucket_pool: int = 100, process_index: int = 0,
               process_count: int = 1):
    local = pipeline.local_batch_size(global_batch_size, process_count, "batch_size")
    if len(split) < global_batch_size:
      raise ValueError(f"batch_size={global_batch_size} exceeds the training split ({len(split)})")
    if bucket_pool < 1 or bucket_width < 1:
      raise ValueError(f"dataset.bucket_pool={bucket_pool}, dataset.bucket_width={bucket_width}; "
                       "allowed: integers >= 1")
    self.split, self.batch_size, self.seed = split, global_batch_size, seed
    self.max_length, self.bucket_width, self.bucket_pool = max_length, bucket_width, bucket_pool
    self.rows = slice(process_index * local, (process_index + 1) * local)
    self.per_epoch = math.ceil(len(split) / global_batch_size)

  def __len__(self) -> int:
    """Batches per epoch."""
    return self.per_epoch

  @functools.lru_cache(maxsize=2)
  def epoch_plan(self, epoch: int) -> list[_Plan]:
    """The global batches of `epoch`, in the order they are served."""
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.split))
    pool = self.bucket_pool * self.batch_size
    lengths = self.split.lengths
    plans = []
    for start in range(0, len(order), pool):
      members = order[start : start + pool]
      members = members[np.argsort(lengths[members], kind="stable")]
      plans.extend(_chunk(members, self.batch_size))
    return [plans[i] for i in rng.permutation(len(plans))]

  def __getitem__(self, b: int) -> dict:
    epoch, j = divmod(int(b), self.per_epoch)
    plan = self.epoch_plan(epoch)[j]
    length = padded_length(int(self.split.lengths[plan.indices].max()), self.bucket_width,
                           self.max_length)
    batch = make_batch(self.split, plan.indices, plan.num_real, length)
    return {k: v[self.rows] for k, v in batch.items()}


def training_stream(batches: TrainBatches, read_threads: int = 1) -> grain.IterDataset:
  """Batches 0, 1, 2, ... of `batches`, endlessly; the iterator's `get_state()`/
  `set_state()` record the batch number, so a resumed run continues exactly."""
  return grain.MapDataset.range(2**62).map(batches.__getitem__).to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4))


def eval_batches(split: PairedSplit, *, global_batch_size: int, max_length: int,
                 bucket_width: int = 8, process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict]:
  """This process's evaluation batches: the split sorted by length (stable), every example
  in exactly one batch (`mask` 1), padding rows `mask` 0; every process yields the same
  number of batches, each of the same length L on every process."""
  local = pipeline.local_batch_size(global_batch_size, process_count, "eval_batch_size")
  rows = slice(process_index * local, (process_index + 1) * local)
  order = np.argsort(split.lengths, kind="stable")
  for plan in _chunk(order, global_batch_size):
    length = padded_length(int(split.lengths[plan.indices].max()), bucket_width, max_length)
    batch = make_batch(split, plan.indices, plan.num_real, length)
    yield {k: v[rows] for k, v in batch.items()}


# -- The dataset as pairs ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TranslationData:
  """A translation dataset read as (source, target) pairs.

  Attributes:
    source_lang, target_lang: the pair's languages.
    source_tokenizer, target_tokenizer: `SentencePiece` or a `WordTokenizer` (the same object
      when the vocabulary is shared).
    splits: split name -> `PairedSplit`.
    max_length: the most ids a source, or BOS/EOS + target, holds.
  """

  source_lang: str
  target_lang: str
  source_tokenizer: SentencePiece | WordTokenizer
  target_tokenizer: SentencePiece | WordTokenizer
  splits: dict[str, PairedSplit]
  max_length: int

  def split(self, name: str) -> PairedSplit:
    if name not in self.splits:
      raise ValueError(f"no split {name!r}; the splits: {sorted(self.splits)}")
    return self.splits[name]

  @property
  def model_defaults(self) -> dict:
    """The model fields the data determines: `vocab_size` (the source's, and the target's
    unless `tgt_vocab_size` says otherwise) and `tgt_vocab_size`."""
    return {"vocab_size": self.source_tokenizer.vocab_size,
            "tgt_vocab_size": self.target_tokenizer.vocab_size}


def _split_text(source, langs: Sequence[str]) -> dict[str, list[str]]:
  """language -> the sentences of split `source` (one read of the split)."""
  if not len(source):
    return {lang: [] for lang in langs}
  examples = pipeline.read_batch(source, range(len(source)))
  return {lang: [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in examples[lang]]
          for lang in langs}


def tokenizer_dir(dataset, dataset_config) -> str:
  """Where tokenisers are stored: `dataset.tokenizer_dir`, else `tokenizers/` beside the
  prepared data.

  Raises:
    ValueError: neither is known (a dataset that is not read from prepared files).
  """
  if dataset_config.get("tokenizer_dir"):
    return dataset_config.get("tokenizer_dir")
  for source in dataset.splits.values():
    info = getattr(source, "dataset_info", None)
    if getattr(info, "data_dir", None):
      return os.path.join(info.data_dir, "tokenizers")
  raise ValueError(f"dataset {dataset.name!r} has no prepared-data folder to store its "
                   "tokenisers in; set dataset.tokenizer_dir")


def _settings(dataset_config, dataset) -> tuple[str, str, int, TokenizerConfig]:
  """(source_lang, target_lang, max_length, TokenizerConfig) of a `config.dataset` block,
  checked against `dataset`."""
  src_lang, tgt_lang = dataset_config.get("source_lang"), dataset_config.get("target_lang")
  train_source = dataset.split(dataset_config.get("train_split", "train"))
  languages = sorted(train_source[0]) if len(train_source) else []
  for field, lang in (("source_lang", src_lang), ("target_lang", tgt_lang)):
    if lang not in languages:
      raise ValueError(f"dataset.{field}={lang!r}; dataset {dataset.name!r} has: "
                       f"{', '.join(languages)}")
  if src_lang == tgt_lang:
    raise ValueError(f"dataset.source_lang and dataset.target_lang are both {src_lang!r}")
  max_length = dataset_config.get("max_length", 128)
  if not isinstance(max_length, int) or max_length < 2:
    raise ValueError(f"dataset.max_length={max_length!r}; allowed: an integer >= 2")
  config = TokenizerConfig(**{f.name: dataset_config.get(f.name, f.default)
                              for f in dataclasses.fields(TokenizerConfig)})
  return src_lang, tgt_lang, max_length, config


def load_tokenizers(dataset_config, dataset):
  """(source tokeniser, target tokeniser, max_length) of a `config.dataset` block (fields
  source_lang, target_lang, tokenizer, vocab_size, min_frequency, shared_vocab,
  sentencepiece_model, max_length, train_split, tokenizer_dir): trained on the training
  split, or read from where an identical one was stored.

  Raises:
    ValueError: a language the dataset lacks, or a bad tokeniser setting.
  """
  src_lang, tgt_lang, max_length, config = _settings(dataset_config, dataset)
  train = dataset.split(dataset_config.get("train_split", "train"))
  src_tok, tgt_tok = tokenizers.build_tokenizers(
      config, _split_text(train, (src_lang, tgt_lang)), src_lang, tgt_lang,
      tokenizer_dir(dataset, dataset_config))
  return src_tok, tgt_tok, max_length


def load_pairs(dataset_config, dataset) -> TranslationData:
  """Reads every split of `dataset` as (source, target) pairs, tokenised as `dataset_config`
  says (see `load_tokenizers`).

  Raises:
    ValueError: a language the dataset lacks, or a bad tokeniser setting.
  """
  src_lang, tgt_lang, max_length, config = _settings(dataset_config, dataset)
  text_of = {name: _split_text(source, (src_lang, tgt_lang))
             for name, source in dataset.splits.items()}
  train_text = text_of[dataset_config.get("train_split", "train")]
  src_tok, tgt_tok = tokenizers.build_tokenizers(config, train_text, src_lang, tgt_lang,
                                                 tokenizer_dir(dataset, dataset_config))
  splits = {name: encode_split(t[src_lang], t[tgt_lang], src_tok, tgt_tok, max_length)
            for name, t in text_of.items()}
  return TranslationData(src_lang, tgt_lang, src_tok, tgt_tok, splits, max_length)
