"""The tokenisers of cnnrnn.data.tokenizers: SentencePiece, lowercased Moses and spaCy words."""

import collections
import os

import ml_collections
import numpy as np
import pytest

from cnnrnn import data
from cnnrnn.data import tokenizers
from cnnrnn.data import translation
from tests.helpers import shared_dataset


def _config(**fields):
  base = dict(source_lang="de", target_lang="en", tokenizer="sentencepiece", vocab_size=1000,
              shared_vocab=True, max_length=64)
  return ml_collections.ConfigDict(base | fields)


@pytest.fixture(scope="module")
def multi30k(data_dir):
  return data.load("multi30k", data_dir, shared_dataset("multi30k"))


@pytest.fixture(scope="module")
def sp_pairs(multi30k):
  return translation.load_pairs(_config(), multi30k)


# Lines of Multi30k's own data/task1/tok/test_2016_flickr.lc.norm.tok.{en,de} (lowercased,
# normalised, Moses-tokenised, escaped; hyphenated words whole), by line number.
TOK_EN = {
    30: "one man holds another man &apos;s head down and prepares to punch him in the face .",
    48: "a father-figure and two children outside their home doing yard work such as using a "
        "hoe on the grass and planting a tree .",
    82: "a man in a black t-shirt , cap and jeans is playing drums on an upside down yellow pail .",
    226: "a woman on a boat named &quot; el corazon &quot; drops black weights into the water .",
    33: "a child is splashing in the water",
}
TOK_DE = {
    2: "ein boston terrier läuft über saftig-grünes gras vor einem weißen zaun .",
    231: "ein mann verkauft waren am rand der straße , die zu einem großen berg im canyon "
         "führt .",
}


def test_moses_pipeline_reproduces_the_datasets_tokenised_files(multi30k):
  test = multi30k.split("test")
  for lang, lines in (("en", TOK_EN), ("de", TOK_DE)):
    for line, expected in lines.items():
      raw = test[line - 1][lang].decode()
      assert " ".join(tokenizers.moses_tokens(raw, lang)) == expected


def test_moses_detokenizer_unescapes():
  tokens = tokenizers.moses_tokens('One man\'s "red" hat.', "en")
  assert tokens == ["one", "man", "&apos;s", "&quot;", "red", "&quot;", "hat", "."]
  assert tokenizers.moses_detokenize(tokens, "en") == 'one man\'s "red" hat.'


def test_word_vocabulary_min_frequency_and_special_ids():
  vocab = tokenizers.word_vocabulary([["b", "a", "b"], ["c", "a", "b"]], min_frequency=2)
  assert vocab == ("<pad>", "<unk>", "<s>", "</s>", "b", "a")
  assert tokenizers.word_vocabulary([["b", "a", "b"], ["c"]], 1, vocab_size=5)[4:] == ("b",)


@pytest.mark.slow
def test_moses_words_on_multi30k(multi30k, tmp_path):
  config = _config(tokenizer="moses_words", vocab_size=0, min_frequency=2, shared_vocab=False,
                   tokenizer_dir=str(tmp_path))
  pairs = translation.load_pairs(config, multi30k)
  tgt = pairs.target_tokenizer
  assert tgt.vocab.tokens[:4] == tokenizers.SPECIAL_TOKENS
  counts = collections.Counter(
      t for s in pairs.split("train").references for t in tokenizers.moses_tokens(s, "en"))
  kept = {w for w, c in counts.items() if c >= 2}
  assert set(tgt.vocab.tokens[4:]) == kept
  assert tgt.encode("a zyzzyva .").tolist() == [tgt.vocab.token_id("a"), tokenizers.UNK_ID,
                                                tgt.vocab.token_id(".")]
  ids = pairs.split("test").tgt[29]
  assert tgt.bleu_tokens(np.concatenate([ids, [tokenizers.EOS_ID, 7, 7]])) == TOK_EN[30]
  stored = os.listdir(tmp_path)  # One vocabulary per language, beside nothing else.
  assert len(stored) == 2 and all(f.endswith(".vocab") for f in stored)


def test_spacy_tokens_lowercased_whitespace_dropped():
  assert tokenizers.spacy_tokens('A man in a t-shirt isn\'t  "happy".  ', "en") == [
      "a", "man", "in", "a", "t", "-", "shirt", "is", "n't", '"', "happy", '"', "."]
  # German's rules keep hyphenated compounds whole.
  assert tokenizers.spacy_tokens("Ein Boston Terrier läuft über saftig-grünes Gras.", "de") == [
      "ein", "boston", "terrier", "läuft", "über", "saftig-grünes", "gras", "."]
  with pytest.raises(ValueError, match="language 'xx-bad'"):
    tokenizers.spacy_tokens("x", "xx-bad")


@pytest.mark.slow
def test_spacy_words_on_multi30k(multi30k, tmp_path):
  config = _config(tokenizer="spacy_words", vocab_size=0, min_frequency=2, shared_vocab=False,
                   tokenizer_dir=str(tmp_path))
  pairs = translation.load_pairs(config, multi30k)
  src, tgt = pairs.source_tokenizer, pairs.target_tokenizer
  assert isinstance(tgt, tokenizers.SpacyWords) and (src.lang, tgt.lang) == ("de", "en")
  assert tgt.vocab.tokens[:4] == tokenizers.SPECIAL_TOKENS
  counts = collections.Counter(
      t for s in pairs.split("train").references for t in tokenizers.spacy_tokens(s, "en"))
  assert set(tgt.vocab.tokens[4:]) == {w for w, c in counts.items() if c >= 2}
  assert "shirt" in tgt.vocab.tokens and "t-shirt" not in tgt.vocab.tokens
  # Test line 82: '... black t-shirt, cap and jeans ... yellow pail.' in spaCy's words.
  reference = pairs.split("test").references[81]
  expected = " ".join(tokenizers.spacy_tokens(reference, "en"))
  assert "black t - shirt , cap" in expected and tgt.reference_tokens(reference) == expected
  ids = pairs.split("test").tgt[81]
  assert tgt.bleu_tokens(np.concatenate([ids, [tokenizers.EOS_ID, 7]])) == " ".join(
      w if w in tgt.vocab.tokens else "<unk>" for w in expected.split())
  # Text from the words: Moses' detokeniser, nothing unescaped (spaCy escapes nothing).
  assert tgt.decode(tgt.encode('A man\'s "red" hat.')) == 'a man\'s "red" hat.'
  stored = sorted(os.listdir(tmp_path))
  assert len(stored) == 2 and all(f.startswith("spacy_words-") for f in stored)


def test_shared_word_vocabulary_holds_both_languages(tmp_path):
  config = tokenizers.TokenizerConfig(tokenizer="moses_words", vocab_size=0, min_frequency=1,
                              shared_vocab=True)
  text = {"de": ["Ein Hund läuft.", "Ein Mann."], "en": ["A dog runs.", "A man's hat."]}
  src, tgt = tokenizers.build_tokenizers(config, text, "de", "en", str(tmp_path))
  assert src.vocab == tgt.vocab and (src.lang, tgt.lang) == ("de", "en")
  assert {"ein", "hund", "dog", "&apos;s", "."} <= set(src.vocab.tokens)
  assert src.vocab.tokens[4:6] == (".", "a")  # Most frequent first, ties alphabetical.


def test_sentencepiece_special_ids_and_round_trip(sp_pairs):
  tok = sp_pairs.target_tokenizer
  assert tok is not None and tok.vocab_size == 1000
  p = tok.processor
  assert [p.pad_id(), p.unk_id(), p.bos_id(), p.eos_id()] == [0, 1, 2, 3]
  assert [p.id_to_piece(i) for i in range(4)] == list(tokenizers.SPECIAL_TOKENS)
  val = sp_pairs.split("validation")
  for sentence, ids in zip(val.references[:100], val.tgt[:100]):
    assert tok.decode(ids) == sentence
    assert not {tokenizers.BOS_ID, tokenizers.EOS_ID, tokenizers.PAD_ID} & set(ids.tolist())
  # Decoding stops at the first EOS and ignores BOS/PAD.
  ids = val.tgt[0]
  decorated = np.concatenate([[tokenizers.BOS_ID], ids, [tokenizers.EOS_ID], ids, [0, 0]])
  assert tok.decode(decorated) == val.references[0]
  # Shared: both languages use one model.
  assert sp_pairs.source_tokenizer.model_proto == tok.model_proto
  assert sp_pairs.model_defaults == {"vocab_size": 1000, "tgt_vocab_size": 1000}


@pytest.mark.slow
def test_sentencepiece_is_deterministic_cached_and_retrained_on_change(multi30k, tmp_path,
                                                                        monkeypatch):
  sentences = [multi30k.split("train")[i]["en"].decode() for i in range(3000)]
  for model_type in tokenizers.SENTENCEPIECE_MODELS:
    a = tokenizers.train_sentencepiece(sentences, vocab_size=500, model_type=model_type)
    assert a == tokenizers.train_sentencepiece(sentences, vocab_size=500, model_type=model_type)
    assert tokenizers.SentencePiece("en", a).processor.eos_id() == tokenizers.EOS_ID
  c = _config(tokenizer_dir=str(tmp_path), vocab_size=600, shared_vocab=False)
  first, _, _ = translation.load_tokenizers(c, multi30k)
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 2 and all(f.endswith(".model") for f in files)

  def no_training(*args, **kwargs):
    raise AssertionError("retrained although nothing changed")

  monkeypatch.setattr(tokenizers, "train_sentencepiece", no_training)
  again, _, _ = translation.load_tokenizers(c, multi30k)
  assert again.model_proto == first.model_proto
  monkeypatch.undo()
  translation.load_tokenizers(
      _config(tokenizer_dir=str(tmp_path), vocab_size=700, shared_vocab=False), multi30k)
  assert len(os.listdir(tmp_path)) == 4
