"""Tokenisers for translation, all by well-kept libraries, with one set of special ids.

- SentencePiece (`SentencePiece`, `train_sentencepiece`): BPE or unigram,
  `character_coverage=1.0`, trained on the training split, one model for both languages
  (`shared_vocab`) or one per language. `build_tokenizers` stores it in a folder (the data
  layer uses `tokenizers/` beside the prepared data), named by a hash of its settings and of
  the training text, so a resumed run reuses it and a change of either retrains it.
- The literature's lowercased Moses words (`MosesWords`, `moses_tokens`): sacremoses'
  lowercase -> normalize-punctuation -> tokenize with `&apos;`-style escapes, exactly the
  pipeline of Multi30k's own `*.lc.norm.tok.*` files (which do not split hyphenated words),
  and a vocabulary of the training words seen at least `min_frequency` times
  (pytorch-seq2seq uses 2); the other words become `<unk>`. `moses_detokenize` undoes it.
- Lowercased spaCy words (`SpacyWords`, `spacy_tokens`): the tokens of spaCy's rule-based
  tokeniser for the language (`spacy.blank(lang)`, no trained model needed), each lowercased,
  as bentrevett/pytorch-seq2seq tokenises (spaCy's `de`/`en` tokenisers, then torchtext's
  `lower=True`). Unlike Moses they split hyphenated words (`t - shirt`) and nothing is escaped.
  Whitespace-only tokens (spaCy's for doubled or trailing spaces) are dropped. Text from the
  tokens: Moses' detokeniser, without unescaping. Same vocabulary rule as Moses words.

A word tokeniser (`MosesWords`, `SpacyWords`) scores `bleu_tok` on its own tokens; a
SentencePiece model on lowercased Moses tokens (`reference_tokens`).

Every vocabulary has the same special ids: pad 0, unk 1, bos 2 (`<s>`), eos 3 (`</s>`).
"""

from collections.abc import Sequence
import collections
import dataclasses
import functools
import hashlib
import io
import json
import os
import tempfile

import numpy as np
import sentencepiece as spm

from cnnrnn.data import text
from cnnrnn.decode import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # pylint: disable=unused-import
from cnnrnn.data.options import Option

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
TOKENIZERS = ("sentencepiece", "moses_words", "spacy_words")
SENTENCEPIECE_MODELS = ("bpe", "unigram")


# -- Moses ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _moses(lang: str):
  import sacremoses  # pylint: disable=g-import-not-at-top  (only the runs that use it pay for it)
  return (sacremoses.MosesPunctNormalizer(lang), sacremoses.MosesTokenizer(lang),
          sacremoses.MosesDetokenizer(lang))


def moses_tokens(sentence: str, lang: str) -> list[str]:
  """The lowercased Moses tokens of `sentence`, as Multi30k's `*.lc.norm.tok.*` files.

  Lowercase -> `normalize-punctuation.perl` -> `tokenizer.perl` (escaping `'` as
  `&apos;`, `"` as `&quot;`, ...; hyphenated words kept whole, as in those files).
  """
  return list(_moses_tokens(sentence, lang))


# Building a vocabulary and encoding the split tokenise the same sentences (~80 us each).
@functools.lru_cache(maxsize=2**17)
def _moses_tokens(sentence: str, lang: str) -> tuple[str, ...]:
  normalizer, tokenizer, _ = _moses(lang)
  return tuple(tokenizer.tokenize(normalizer.normalize(sentence.lower()), escape=True))


def moses_detokenize(tokens: Sequence[str], lang: str, unescape: bool = True) -> str:
  """Moses tokens back to text (`detokenizer.perl`, unescaping `&apos;` etc. unless
  `unescape=False`)."""
  return _moses(lang)[2].detokenize(list(tokens), unescape=unescape)


# -- spaCy ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _spacy(lang: str):
  import spacy  # Imported on first use: about a second, and only spaCy-word runs need it.
  try:
    return spacy.blank(lang).tokenizer
  except ImportError as e:  # spaCy's error for a language code it does not have.
    raise ValueError(f"dataset language {lang!r}: spaCy has no tokeniser for it ({e})") from e


def spacy_tokens(sentence: str, lang: str) -> list[str]:
  """The lowercased tokens of spaCy's rule-based tokeniser for `lang` (whitespace dropped)."""
  return list(_spacy_tokens(sentence, lang))


@functools.lru_cache(maxsize=2**17)
def _spacy_tokens(sentence: str, lang: str) -> tuple[str, ...]:
  return tuple(t.text.lower() for t in _spacy(lang)(sentence) if not t.is_space)


def content_ids(ids) -> np.ndarray:
  """The ids [L] of a decoded sequence up to its first EOS, without PAD and BOS."""
  ids = np.asarray(ids).reshape(-1)
  eos = np.flatnonzero(ids == EOS_ID)
  if len(eos):
    ids = ids[: eos[0]]
  return ids[(ids != PAD_ID) & (ids != BOS_ID)]


# -- Tokenisers ----------------------------------------------------------------------------


def word_vocabulary(token_lists: Sequence[Sequence[str]], min_frequency: int = 2,
                    vocab_size: int = 0) -> tuple[str, ...]:
  """The special tokens, then the words seen >= `min_frequency` times, most frequent first
  (ties alphabetical), at most `vocab_size` tokens in all (0: no cap)."""
  counts = collections.Counter(t for tokens in token_lists for t in tokens)
  words = sorted((w for w, c in counts.items() if c >= min_frequency and w not in SPECIAL_TOKENS),
                 key=lambda w: (-counts[w], w))
  if vocab_size:
    words = words[: max(vocab_size - len(SPECIAL_TOKENS), 0)]
  return SPECIAL_TOKENS + tuple(words)


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
  """Words of one language and their vocabulary (ids 0-3 special); subclasses say how a
  sentence becomes words (`words`) and words become text (`detokenize`)."""

  lang: str
  vocab: text.Vocabulary

  @staticmethod
  def words(sentence: str, lang: str) -> list[str]:
    raise NotImplementedError

  @staticmethod
  def detokenize(tokens: Sequence[str], lang: str) -> str:
    raise NotImplementedError

  @classmethod
  def build(cls, sentences: Sequence[str], lang: str, min_frequency: int = 2,
            vocab_size: int = 0):
    """The vocabulary of `sentences`' words (see `word_vocabulary`)."""
    words = [cls.words(s, lang) for s in sentences]
    return cls(lang, text.Vocabulary(word_vocabulary(words, min_frequency, vocab_size), "word",
                                     unk=SPECIAL_TOKENS[UNK_ID]))

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def encode(self, sentence: str) -> np.ndarray:
    """Ids [L] int32 of `sentence` (no BOS/EOS)."""
    return self.vocab.encode_tokens(self.words(sentence, self.lang))

  def pieces(self, ids) -> list[str]:
    """The tokens of ids [L] up to the first EOS."""
    return [self.vocab.tokens[int(i)] for i in content_ids(ids)]

  def decode(self, ids) -> str:
    """Detokenised (still lowercased) text of ids [L] up to the first EOS."""
    return self.detokenize(self.pieces(ids), self.lang)

  def bleu_tokens(self, ids) -> str:
    """The tokens of ids [L], space-separated (tokenised BLEU's input)."""
    return " ".join(self.pieces(ids))

  def reference_tokens(self, sentence: str) -> str:
    """A reference sentence's tokens, space-separated (tokenised BLEU's reference)."""
    return " ".join(self.words(sentence, self.lang))


@dataclasses.dataclass(frozen=True)
class MosesWords(WordTokenizer):
  """Lowercased Moses words of one language and their vocabulary (ids 0-3 special)."""

  @staticmethod
  def words(sentence: str, lang: str) -> list[str]:
    """The word tokens of `sentence` (`moses_tokens`)."""
    return moses_tokens(sentence, lang)

  @staticmethod
  def detokenize(tokens: Sequence[str], lang: str) -> str:
    return moses_detokenize(tokens, lang)


@dataclasses.dataclass(frozen=True)
class SpacyWords(WordTokenizer):
  """Lowercased spaCy words of one language and their vocabulary (ids 0-3 special)."""

  @staticmethod
  def words(sentence: str, lang: str) -> list[str]:
    """The word tokens of `sentence` (`spacy_tokens`)."""
    return spacy_tokens(sentence, lang)

  @staticmethod
  def detokenize(tokens: Sequence[str], lang: str) -> str:
    return moses_detokenize(tokens, lang, unescape=False)


WORD_TOKENIZERS = {"moses_words": MosesWords, "spacy_words": SpacyWords}


@dataclasses.dataclass(frozen=True)
class SentencePiece:
  """A SentencePiece model (ids 0-3 special) used for one language."""

  lang: str
  model_proto: bytes = dataclasses.field(repr=False)

  @functools.cached_property
  def processor(self) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=self.model_proto)

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def encode(self, sentence: str) -> np.ndarray:
    """Ids [L] int32 of `sentence` (no BOS/EOS)."""
    return np.asarray(self.processor.encode(sentence, out_type=int), np.int32)

  def pieces(self, ids) -> list[str]:
    """The pieces of ids [L] up to the first EOS."""
    return [self.processor.id_to_piece(int(i)) for i in content_ids(ids)]

  def decode(self, ids) -> str:
    """Detokenised text of ids [L] up to the first EOS."""
    return self.processor.decode([int(i) for i in content_ids(ids)])

  def bleu_tokens(self, ids) -> str:
    """The lowercased Moses tokens of the decoded text, space-separated."""
    return " ".join(moses_tokens(self.decode(ids), self.lang))

  def reference_tokens(self, sentence: str) -> str:
    """A reference sentence's lowercased Moses tokens, space-separated."""
    return " ".join(moses_tokens(sentence, self.lang))


def train_sentencepiece(sentences: Sequence[str], *, vocab_size: int, model_type: str = "bpe"
                        ) -> bytes:
  """Trains a SentencePiece model on `sentences`; returns the serialised model.

  `character_coverage=1.0` (every character of the training text gets a piece) and the
  special ids pad 0, unk 1, bos 2, eos 3 (SentencePiece's defaults are -1, 0, 1, 2). One
  thread and the whole input, so the same sentences always give the same model.

  Raises:
    ValueError: an unknown `model_type`, or a vocabulary the text cannot fill.
  """
  if model_type not in SENTENCEPIECE_MODELS:
    raise ValueError(f"dataset.sentencepiece_model={model_type!r}; allowed: "
                     f"{', '.join(SENTENCEPIECE_MODELS)}")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type=model_type,
        vocab_size=vocab_size, character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID,
        bos_id=BOS_ID, eos_id=EOS_ID, pad_piece=SPECIAL_TOKENS[0], unk_piece=SPECIAL_TOKENS[1],
        bos_piece=SPECIAL_TOKENS[2], eos_piece=SPECIAL_TOKENS[3], num_threads=1,
        input_sentence_size=0, minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"dataset.vocab_size={vocab_size}: SentencePiece cannot train it ({e})") from e
  return model.getvalue()


def _cached(path: str, make) -> bytes:
  """The bytes in `path`, or `make()` written there atomically (concurrent writers of the
  same deterministic bytes are harmless)."""
  if os.path.exists(path):
    with open(path, "rb") as f:
      return f.read()
  payload = make()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  with os.fdopen(fd, "wb") as f:
    f.write(payload)
  os.replace(tmp, path)
  return payload


def _fingerprint(settings: dict, texts: Sequence[Sequence[str]]) -> str:
  h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for sentences in texts:
    for s in sentences:
      h.update(s.encode("utf-8") + b"\n")
    h.update(b"\0")
  return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """How to tokenise (the `config.dataset` fields of the same names).

  Attributes:
    tokenizer: "sentencepiece", "moses_words" or "spacy_words".
    vocab_size: SentencePiece's vocabulary size; for words an optional cap (0: none).
    min_frequency: words: the fewest training occurrences a word needs.
    shared_vocab: one tokeniser/vocabulary for both languages, trained on both.
    sentencepiece_model: "bpe" or "unigram".
  """

  tokenizer: str = "sentencepiece"
  vocab_size: int = 8000
  min_frequency: int = 2
  shared_vocab: bool = True
  sentencepiece_model: str = "bpe"

  def __post_init__(self):
    if self.tokenizer not in TOKENIZERS:
      raise ValueError(f"dataset.tokenizer={self.tokenizer!r}; allowed: {', '.join(TOKENIZERS)}")
    if self.tokenizer == "sentencepiece" and (self.vocab_size or 0) <= len(SPECIAL_TOKENS):
      raise ValueError(f"dataset.vocab_size={self.vocab_size}; SentencePiece needs more than "
                       f"{len(SPECIAL_TOKENS)}")
    if self.sentencepiece_model not in SENTENCEPIECE_MODELS:
      raise ValueError(f"dataset.sentencepiece_model={self.sentencepiece_model!r}; allowed: "
                       f"{', '.join(SENTENCEPIECE_MODELS)}")
    if self.min_frequency < 1:
      raise ValueError(f"dataset.min_frequency={self.min_frequency}; allowed: an integer >= 1")


# The `config.dataset` fields of `TokenizerConfig` (cnnrnn.data.options).
CONFIG_OPTIONS = {
    "tokenizer": Option(str, choices=TOKENIZERS),
    "vocab_size": Option(int, minimum=0),
    "min_frequency": Option(int, minimum=1),
    "shared_vocab": Option(bool),
    "sentencepiece_model": Option(str, choices=SENTENCEPIECE_MODELS),
}


def build_tokenizers(config: TokenizerConfig, train_text: dict[str, Sequence[str]],
                     source_lang: str, target_lang: str, cache_dir: str):
  """(source tokeniser, target tokeniser), built from the training sentences `train_text`
  (language -> sentences) or read from `cache_dir` where an identical one was stored."""
  langs = (source_lang, target_lang)
  groups = [langs] if config.shared_vocab else [(source_lang,), (target_lang,)]
  built = {}
  for group in groups:
    texts = [train_text[lang] for lang in group]
    settings = dataclasses.asdict(config) | {"languages": list(group)}
    if config.tokenizer == "moses_words":
      import sacremoses  # pylint: disable=g-import-not-at-top
      settings |= {"sacremoses": sacremoses.__version__}
    elif config.tokenizer == "spacy_words":
      import spacy
      settings |= {"spacy": spacy.__version__}
    else:
      settings |= {"sentencepiece": spm.__version__}
      del settings["min_frequency"]
    name = f"{config.tokenizer}-{'-'.join(group)}-{_fingerprint(settings, texts)}"
    if config.tokenizer == "sentencepiece":
      proto = _cached(os.path.join(cache_dir, name + ".model"), lambda: train_sentencepiece(
          [s for t in texts for s in t], vocab_size=config.vocab_size,
          model_type=config.sentencepiece_model))
      built |= {lang: SentencePiece(lang, proto) for lang in group}
    else:
      words = WORD_TOKENIZERS[config.tokenizer]
      # Each language's sentences tokenised by its own language's rules.
      tokens = _cached(os.path.join(cache_dir, name + ".vocab"), lambda: "".join(
          w + "\n" for w in word_vocabulary(
              [words.words(s, lang) for t, lang in zip(texts, group) for s in t],
              config.min_frequency, config.vocab_size)).encode("utf-8"))
      vocab = text.Vocabulary(tuple(tokens.decode("utf-8").splitlines()), "word",
                              unk=SPECIAL_TOKENS[UNK_ID])
      built |= {lang: words(lang, vocab) for lang in group}
  return built[source_lang], built[target_lang]
