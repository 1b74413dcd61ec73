"""Text for language models: vocabularies, encoding, and truncated-BPTT batching.

Batching follows Zaremba et al. 2014 (their `ptb_iterator`): the token stream of a split is
cut into B contiguous streams, one per batch row, and batch j holds window j of every
stream, so the recurrent carry at the end of batch j is the right initial carry of batch
j + 1. Only the first batch of a pass over the split starts from a zero carry; its
`reset` entries say so.

Row b of the global layout holds tokens b*N .. b*N + N: its N inputs are the first N of
them, its N targets the last N. Consecutive rows share one token, so the rows together
predict tokens 1 .. B*N of the split, each once (Zaremba's rows do not overlap and lose
B - 1 targets; otherwise the layouts are the same).

- Training: N = (L - 1) // B (the remainder of the stream is dropped) and only full
  windows of T steps are used, N // T batches per epoch, every epoch the same.
- Evaluation: N = ceil((L - 1) / B), the last row(s) padded, and the last partial window
  kept and padded to T steps; `mask` is 1 exactly on the L - 1 real targets (every token
  of the split except the first), so summed NLL / sum of masks is the split's per-token NLL.

Multi-process: process p of P reads rows [p B / P, (p + 1) B / P) of the same global
layout, so the global batch does not depend on P.
"""

import collections
from collections.abc import Iterable, Iterator, Sequence
import dataclasses
import functools
import math

import grain
import numpy as np

from cnnrnn.data import pipeline

EOS = "<eos>"
UNK = "<unk>"
LEVELS = ("word", "char")
# How each of cnnrnn's text datasets is tokenised.
DATASET_LEVELS = {"ptb": "word", "tiny_shakespeare": "char"}


def _check_level(level: str) -> None:
  if level not in LEVELS:
    raise ValueError(f"level={level!r}; allowed: {', '.join(LEVELS)}")


def tokenize(text: str, level: str) -> list[str]:
  """Splits `text` into tokens.

  Args:
    text: any text.
    level: "word" (whitespace-separated words, each line break becoming `<eos>`, as in
      Mikolov's PTB files) or "char" (every character, line breaks included).

  Returns:
    The tokens, in order.
  """
  _check_level(level)
  if level == "char":
    return list(text)
  tokens = []
  for line in text.splitlines(keepends=True):
    tokens.extend(line.split())
    if line.endswith(("\n", "\r")):
      tokens.append(EOS)
  return tokens


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Tokens <-> integer ids.

  Attributes:
    tokens: the token of each id.
    level: "word" or "char" (how text is tokenised, see `tokenize`).
    unk: the token that stands for tokens outside the vocabulary, or None to reject them.
  """

  tokens: tuple[str, ...] = dataclasses.field(repr=False)
  level: str
  unk: str | None = None

  def __post_init__(self):
    _check_level(self.level)
    if len(set(self.tokens)) != len(self.tokens):
      raise ValueError("Vocabulary.tokens has duplicates")
    if self.unk is not None and self.unk not in self.tokens:
      raise ValueError(f"Vocabulary.unk={self.unk!r} is not one of its tokens")

  @classmethod
  def build(cls, tokens: Iterable[str], level: str, unk: str | None = None) -> "Vocabulary":
    """The distinct `tokens`, most frequent first, ties in alphabetical order.

    `unk`, if given, is added when `tokens` lack it.
    """
    counts = collections.Counter(tokens)
    if unk is not None:
      counts.setdefault(unk, 0)
    order = sorted(counts, key=lambda t: (-counts[t], t))
    return cls(tuple(order), level, unk)

  @functools.cached_property
  def _ids(self) -> dict[str, int]:
    return {t: i for i, t in enumerate(self.tokens)}

  def __len__(self) -> int:
    return len(self.tokens)

  def token_id(self, token: str) -> int:
    """The id of `token` (that of `unk` for unknown tokens when `unk` is set)."""
    return self.encode_tokens([token])[0]

  def encode_tokens(self, tokens: Sequence[str]) -> np.ndarray:
    """Ids [L] int32 of `tokens`.

    Raises:
      ValueError: a token is not in the vocabulary and `unk` is None.
    """
    ids = self._ids
    if self.unk is None:
      unknown = sorted({t for t in tokens if t not in ids})
      if unknown:
        raise ValueError(
            f"{len(unknown)} tokens are not in the vocabulary of {len(self)}: "
            f"{', '.join(map(repr, unknown[:10]))}"
        )
      return np.fromiter((ids[t] for t in tokens), np.int32, count=len(tokens))
    unk_id = ids[self.unk]
    return np.fromiter((ids.get(t, unk_id) for t in tokens), np.int32, count=len(tokens))

  def encode(self, text: str) -> np.ndarray:
    """Ids [L] int32 of `text`, tokenised at this vocabulary's level."""
    return self.encode_tokens(tokenize(text, self.level))

  def decode(self, ids) -> str:
    """The text of ids [L]: characters concatenated, or words joined by spaces with
    `<eos>` written as a line break (the inverse of `encode` up to whitespace)."""
    tokens = [self.tokens[int(i)] for i in np.asarray(ids).reshape(-1)]
    if self.level == "char":
      return "".join(tokens)
    lines, line = [], []
    for t in tokens:
      if t == EOS:
        lines.append(" ".join(line) + "\n")
        line = []
      else:
        line.append(t)
    return "".join(lines) + " ".join(line)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A text dataset as token ids.

  Attributes:
    vocab: built from the training split.
    splits: split name -> token ids [L] int32 of the whole split, in order.
  """

  vocab: Vocabulary
  splits: dict[str, np.ndarray]

  def split(self, name: str) -> np.ndarray:
    if name not in self.splits:
      raise ValueError(f"corpus has no split {name!r}; its splits: {sorted(self.splits)}")
    return self.splits[name]


def split_text(source, level: str) -> str:
  """The text of a split: its examples (field "text") in order, as one string.

  At word level each example is a line (it gets a line break, hence an `<eos>`); at
  character level the examples are concatenated as they are.
  """
  _check_level(level)
  if not len(source):
    return ""
  texts = pipeline.read_batch(source, range(len(source)))["text"]
  texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
  return "".join(t + "\n" for t in texts) if level == "word" else "".join(texts)


def load_corpus(dataset, level: str | None = None, train_split: str = "train") -> Corpus:
  """Tokenises every split of a text dataset (`cnnrnn.data.load(...)`) with a vocabulary
  built from `train_split`: PTB gives 10,000 words, Tiny Shakespeare 65 characters.

  Args:
    dataset: a `cnnrnn.data.Dataset` whose examples have a string field "text".
    level: "word" or "char"; default from `DATASET_LEVELS` by the dataset's name.
    train_split: the split the vocabulary is built from.

  Raises:
    ValueError: no level given for an unknown dataset, or another split holds tokens the
      vocabulary lacks (character level; word level maps them to `<unk>` if it exists).
  """
  if level is None:
    if dataset.name not in DATASET_LEVELS:
      raise ValueError(
          f"level=None but dataset {dataset.name!r} has no default; pass level= one of "
          f"{', '.join(LEVELS)} (defaults exist for {', '.join(sorted(DATASET_LEVELS))})"
      )
    level = DATASET_LEVELS[dataset.name]
  tokens = {s: tokenize(split_text(src, level), level) for s, src in dataset.splits.items()}
  if train_split not in tokens:
    raise ValueError(f"train_split={train_split!r}; the dataset's splits: {sorted(tokens)}")
  train = tokens[train_split]
  vocab = Vocabulary.build(train, level, unk=UNK if level == "word" and UNK in set(train) else None)
  return Corpus(vocab, {s: vocab.encode_tokens(t) for s, t in tokens.items()})


class LanguageModelBatches:
  """This process's truncated-BPTT batches over B contiguous streams (see the module doc).

  Indexable by batch number: in training, batch b is window b % len(self) of epoch
  b // len(self), for any b >= 0; in evaluation, 0 <= b < len(self). Each batch is a dict

    inputs:  [B_local, T] int32, token ids
    targets: [B_local, T] int32, the inputs shifted by one step (the next tokens)
    mask:    [B_local, T] float32, 1 on real targets, 0 on padding (evaluation only)
    reset:   [B_local] bool, True in the first batch of a pass: start from a zero carry

  where B_local = global_batch_size / process_count. Between consecutive batches the
  final carry of one is the initial carry of the next.

  Args:
    tokens: token ids [L] of one split.
    global_batch_size: B, the number of streams.
    seq_len: T, the steps of one window (the truncated-BPTT length).
    train: drop the incomplete end (full windows only) or, False, keep and mask it.
    process_index: p.
    process_count: P; must divide B.
    pad_id: the token id written into padding.

  Raises:
    ValueError: B or T is not positive, B does not divide over the processes, or the
      split is too short for one training window.
  """

  def __init__(
      self,
      tokens,
      *,
      global_batch_size: int,
      seq_len: int,
      train: bool,
      process_index: int = 0,
      process_count: int = 1,
      pad_id: int = 0,
  ):
    tokens = np.asarray(tokens, np.int32).reshape(-1)
    field = "batch_size" if train else "eval_batch_size"
    if global_batch_size < 1:
      raise ValueError(f"{field}={global_batch_size}; must be positive")
    if seq_len < 1:
      raise ValueError(f"seq_len={seq_len}; must be positive")
    pipeline.local_batch_size(global_batch_size, process_count, field)
    B, T = global_batch_size, seq_len
    num_targets = max(len(tokens) - 1, 0)
    if train:
      n = num_targets // B  # Targets per row; the remainder is dropped.
      self.num_batches = n // T
      if not self.num_batches:
        raise ValueError(
            f"{field}={B} streams of seq_len={T} steps need at least {B * T + 1} tokens; "
            f"the split has {len(tokens)}"
        )
    else:
      n = -(-num_targets // B)  # Targets per row; the last rows are padded.
      self.num_batches = -(-n // T)
    local = B // process_count
    starts = n * np.arange(process_index * local, (process_index + 1) * local)
    # Row r holds tokens starts[r] .. starts[r] + n (the last one is the next row's first),
    # and pad_id from there to the end of the last window.
    k = np.arange(self.num_batches * T + 1)
    pos = starts[:, None] + k  # [B_local, K T + 1]
    inside = (k <= n) & (pos < len(tokens))
    self._data = np.full(pos.shape, pad_id, np.int32)
    self._data[inside] = tokens[pos[inside]]
    self._mask = inside[:, 1:].astype(np.float32)  # [B_local, K T]: target k + 1 is real.
    self.seq_len = T
    self.train = train

  def __len__(self) -> int:
    """Batches per pass over the split (one training epoch, or one evaluation)."""
    return self.num_batches

  def __getitem__(self, b: int) -> dict:
    b = int(b)
    if b < 0 or (not self.train and b >= self.num_batches):
      raise IndexError(f"batch {b} of {self.num_batches}")
    j = b % self.num_batches
    window = slice(j * self.seq_len, (j + 1) * self.seq_len)
    shifted = slice(j * self.seq_len + 1, (j + 1) * self.seq_len + 1)
    return {
        "inputs": self._data[:, window],
        "targets": self._data[:, shifted],
        "mask": self._mask[:, window],
        "reset": np.full(len(self._data), j == 0),
    }

  def __iter__(self) -> Iterator[dict]:
    """One pass: batches 0 .. len(self) - 1."""
    return (self[b] for b in range(self.num_batches))


def training_stream(batches: LanguageModelBatches) -> grain.IterDataset:
  """Training batches 0, 1, 2, ... of `batches` (train=True), endlessly. The iterator's
  `get_state()`/`set_state()` record the batch number, so a resumed run continues with
  the next window of the streams."""
  return grain.MapDataset.range(2**62).map(batches.__getitem__).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))


def lm_eval_batches(
    tokens,
    *,
    global_batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
) -> LanguageModelBatches:
  """This process's evaluation batches: one pass counting every target exactly once
  (`mask`); every process yields the same number of batches."""
  return LanguageModelBatches(
      tokens, global_batch_size=global_batch_size, seq_len=seq_len, train=False,
      process_index=process_index, process_count=process_count)


def perplexity(nll_sum, num_tokens) -> float:
  """exp(mean NLL in nats) from the summed NLL over `num_tokens` targets."""
  return math.exp(float(nll_sum) / float(num_tokens))


def bits_per_token(nll_sum, num_tokens) -> float:
  """Mean NLL in bits (bits per character for a character model) from summed nats."""
  return float(nll_sum) / float(num_tokens) / math.log(2.0)
