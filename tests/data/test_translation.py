"""Tokenisers, vocabularies and bucketed batches of cnnrnn.data.translation."""

import collections
import os

import ml_collections
import numpy as np
import pytest

from cnnrnn import data
from cnnrnn.data import translation as tr
from tests.helpers import shared_dataset


def _config(**fields):
  base = dict(source_lang="de", target_lang="en", tokenizer="sentencepiece", vocab_size=1000,
              shared_vocab=True, max_length=64)
  return ml_collections.ConfigDict(base | fields)


@pytest.fixture(scope="module")
def multi30k(tmp_path_factory):
  tfds_dir = str(tmp_path_factory.mktemp("tfds"))
  return data.load("multi30k", tfds_dir, shared_dataset("multi30k"))


@pytest.fixture(scope="module")
def sp_pairs(multi30k):
  return tr.load_pairs(_config(), multi30k)


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
      assert " ".join(tr.moses_tokens(raw, lang)) == expected


def test_moses_detokenizer_unescapes():
  tokens = tr.moses_tokens('One man\'s "red" hat.', "en")
  assert tokens == ["one", "man", "&apos;s", "&quot;", "red", "&quot;", "hat", "."]
  assert tr.moses_detokenize(tokens, "en") == 'one man\'s "red" hat.'


def test_word_vocabulary_min_frequency_and_special_ids():
  vocab = tr.word_vocabulary([["b", "a", "b"], ["c", "a", "b"]], min_frequency=2)
  assert vocab == ("<pad>", "<unk>", "<s>", "</s>", "b", "a")
  assert tr.word_vocabulary([["b", "a", "b"], ["c"]], 1, vocab_size=5)[4:] == ("b",)


def test_moses_words_on_multi30k(multi30k, tmp_path):
  pairs = tr.load_pairs(_config(tokenizer="moses_words", vocab_size=0, min_frequency=2,
                                shared_vocab=False, tokenizer_dir=str(tmp_path)), multi30k)
  tgt = pairs.target_tokenizer
  assert tgt.vocab.tokens[:4] == tr.SPECIAL_TOKENS
  counts = collections.Counter(
      t for s in pairs.split("train").references for t in tr.moses_tokens(s, "en"))
  kept = {w for w, c in counts.items() if c >= 2}
  assert set(tgt.vocab.tokens[4:]) == kept
  assert tgt.encode("a zyzzyva .").tolist() == [tgt.vocab.token_id("a"), tr.UNK_ID,
                                                tgt.vocab.token_id(".")]
  ids = pairs.split("test").tgt[29]
  assert tgt.bleu_tokens(np.concatenate([ids, [tr.EOS_ID, 7, 7]])) == TOK_EN[30]
  stored = os.listdir(tmp_path)  # One vocabulary per language, beside nothing else.
  assert len(stored) == 2 and all(f.endswith(".vocab") for f in stored)


def test_shared_word_vocabulary_holds_both_languages(tmp_path):
  config = tr.TokenizerConfig(tokenizer="moses_words", vocab_size=0, min_frequency=1,
                              shared_vocab=True)
  text = {"de": ["Ein Hund läuft.", "Ein Mann."], "en": ["A dog runs.", "A man's hat."]}
  src, tgt = tr.build_tokenizers(config, text, "de", "en", str(tmp_path))
  assert src.vocab == tgt.vocab and (src.lang, tgt.lang) == ("de", "en")
  assert {"ein", "hund", "dog", "&apos;s", "."} <= set(src.vocab.tokens)
  assert src.vocab.tokens[4:6] == (".", "a")  # Most frequent first, ties alphabetical.


def test_sentencepiece_special_ids_and_round_trip(sp_pairs):
  tok = sp_pairs.target_tokenizer
  assert tok is not None and tok.vocab_size == 1000
  p = tok.processor
  assert [p.pad_id(), p.unk_id(), p.bos_id(), p.eos_id()] == [0, 1, 2, 3]
  assert [p.id_to_piece(i) for i in range(4)] == list(tr.SPECIAL_TOKENS)
  val = sp_pairs.split("validation")
  for sentence, ids in zip(val.references[:100], val.tgt[:100]):
    assert tok.decode(ids) == sentence
    assert tr.BOS_ID not in ids and tr.EOS_ID not in ids and tr.PAD_ID not in ids
  # Decoding stops at the first EOS and ignores BOS/PAD.
  ids = val.tgt[0]
  decorated = np.concatenate([[tr.BOS_ID], ids, [tr.EOS_ID], ids, [0, 0]])
  assert tok.decode(decorated) == val.references[0]
  # Shared: both languages use one model.
  assert sp_pairs.source_tokenizer.model_proto == tok.model_proto
  assert sp_pairs.model_defaults == {"vocab_size": 1000, "tgt_vocab_size": 1000}


def test_sentencepiece_is_deterministic_cached_and_retrained_on_change(multi30k, tmp_path,
                                                                        monkeypatch):
  sentences = [multi30k.split("train")[i]["en"].decode() for i in range(3000)]
  for model_type in tr.SENTENCEPIECE_MODELS:
    a = tr.train_sentencepiece(sentences, vocab_size=500, model_type=model_type)
    assert a == tr.train_sentencepiece(sentences, vocab_size=500, model_type=model_type)
    assert tr.SentencePiece("en", a).processor.eos_id() == tr.EOS_ID
  c = _config(tokenizer_dir=str(tmp_path), vocab_size=600, shared_vocab=False)
  first, _, _ = tr.load_tokenizers(c, multi30k)
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 2 and all(f.endswith(".model") for f in files)

  def no_training(*args, **kwargs):
    raise AssertionError("retrained although nothing changed")

  monkeypatch.setattr(tr, "train_sentencepiece", no_training)
  again, _, _ = tr.load_tokenizers(c, multi30k)
  assert again.model_proto == first.model_proto
  monkeypatch.undo()
  tr.load_tokenizers(_config(tokenizer_dir=str(tmp_path), vocab_size=700, shared_vocab=False),
                     multi30k)
  assert len(os.listdir(tmp_path)) == 4


@pytest.mark.parametrize("field,value,match", [
    ("tokenizer", "bpe", r"dataset.tokenizer='bpe'; allowed: sentencepiece, moses_words"),
    ("source_lang", "cs", r"dataset.source_lang='cs'; dataset 'multi30k' has: de, en, fr"),
    ("sentencepiece_model", "char", r"dataset.sentencepiece_model='char'; allowed: bpe, unigram"),
    ("max_length", 1, r"dataset.max_length=1"),
])
def test_bad_settings_name_the_field(multi30k, tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    tr.load_pairs(_config(tokenizer_dir=str(tmp_path), **{field: value}), multi30k)


def _toy_split(n=1000, seed=0):
  rng = np.random.default_rng(seed)
  src = [rng.integers(4, 50, rng.integers(1, 40)).astype(np.int32) for _ in range(n)]
  tgt = [rng.integers(4, 50, rng.integers(1, 40)).astype(np.int32) for _ in range(n)]
  return tr.PairedSplit(src, tgt, [""] * n, [f"ref {i}" for i in range(n)])


def test_batch_layout():
  split = _toy_split(4)
  batch = tr.make_batch(split, np.array([2, 0, 2]), num_real=2, length=48)
  for row, i in enumerate([2, 0]):
    s, t = split.src[i], split.tgt[i]
    np.testing.assert_array_equal(batch["src"][row, : len(s)], s)
    assert not batch["src"][row, len(s):].any()
    np.testing.assert_array_equal(batch["tgt_in"][row, : len(t) + 1], np.r_[tr.BOS_ID, t])
    np.testing.assert_array_equal(batch["tgt_out"][row, : len(t) + 1], np.r_[t, tr.EOS_ID])
    assert not batch["tgt_in"][row, len(t) + 1:].any()
    assert not batch["tgt_out"][row, len(t) + 1:].any()
    assert batch["tgt_lengths"][row] == len(t) + 1 and batch["src_lengths"][row] == len(s)
  assert batch["mask"].tolist() == [1, 1, 0] and batch["index"].tolist() == [2, 0, 2]


@pytest.mark.parametrize("process_count", [1, 2])
def test_bucketing_keeps_every_example_once_per_epoch(process_count):
  split = _toy_split(1000)
  parts = [tr.TrainBatches(split, global_batch_size=64, seed=3, max_length=64, bucket_width=8,
                           bucket_pool=4, process_index=p, process_count=process_count)
           for p in range(process_count)]
  assert len(parts[0]) == 16  # ceil(1000 / 64)
  for epoch in range(2):
    seen = []
    for j in range(len(parts[0])):
      batches = [p[epoch * len(parts[0]) + j] for p in parts]
      assert len({b["src"].shape for b in batches}) == 1  # Every process pads alike.
      for b in batches:
        assert b["src"].shape[0] == 64 // process_count and b["src"].shape[1] % 8 == 0
        seen.extend(b["index"][b["mask"] == 1])
    assert sorted(seen) == list(range(1000))
  assert not np.array_equal(parts[0][0]["index"], parts[0][16]["index"])  # Reshuffled.


def test_bucketing_gives_batches_of_similar_lengths():
  split = _toy_split(2000)

  def padding_fraction(pool):
    batches = tr.TrainBatches(split, global_batch_size=50, seed=0, max_length=64,
                              bucket_width=1, bucket_pool=pool)
    real = total = 0
    for j in range(len(batches)):
      b = batches[j]
      lengths = np.maximum(b["src_lengths"], b["tgt_lengths"])[b["mask"] == 1]
      real += lengths.sum()
      total += b["src"].size
    return 1 - real / total

  assert padding_fraction(1) > 0.3  # Random batches: about a third is padding.
  assert padding_fraction(40) < 0.05


def test_training_stream_resumes_exactly():
  batches = tr.TrainBatches(_toy_split(300), global_batch_size=32, seed=1, max_length=64)
  it = iter(tr.training_stream(batches))
  for _ in range(12):  # Crosses an epoch boundary (10 batches per epoch).
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(tr.training_stream(batches))
  resumed.set_state(state)
  for e in expected:
    got = next(resumed)
    for k in e:
      np.testing.assert_array_equal(got[k], e[k])


def test_eval_batches_see_every_example_exactly_once():
  split = _toy_split(1014)
  for process_count in (1, 2):
    seen = []
    per_process = [list(tr.eval_batches(split, global_batch_size=64, max_length=64,
                                        process_index=p, process_count=process_count))
                   for p in range(process_count)]
    assert len({len(b) for b in per_process}) == 1
    for batches in zip(*per_process):
      assert len({b["src"].shape for b in batches}) == 1
      for b in batches:
        seen.extend(b["index"][b["mask"] == 1])
    assert sorted(seen) == list(range(1014))
  lengths = [b["src"].shape[1] for b in tr.eval_batches(split, global_batch_size=64, max_length=64)]
  assert lengths == sorted(lengths)  # Sorted by length: little padding.
