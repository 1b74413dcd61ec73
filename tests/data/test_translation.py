"""Sentence pairs and bucketed batches of cnnrnn.data.translation."""

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


@pytest.mark.parametrize("field,value,match", [
    ("tokenizer", "bpe",
     r"dataset.tokenizer='bpe'; allowed: sentencepiece, moses_words, spacy_words"),
    ("source_lang", "cs", r"dataset.source_lang='cs'; dataset 'multi30k' has: de, en, fr"),
    ("sentencepiece_model", "char", r"dataset.sentencepiece_model='char'; allowed: bpe, unigram"),
    ("max_length", 1, r"dataset.max_length=1"),
])
def test_bad_settings_name_the_field(multi30k, tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    translation.load_pairs(_config(tokenizer_dir=str(tmp_path), **{field: value}), multi30k)


def _toy_split(n=1000, seed=0):
  rng = np.random.default_rng(seed)
  src = [rng.integers(4, 50, rng.integers(1, 40)).astype(np.int32) for _ in range(n)]
  tgt = [rng.integers(4, 50, rng.integers(1, 40)).astype(np.int32) for _ in range(n)]
  return translation.PairedSplit(src, tgt, [""] * n, [f"ref {i}" for i in range(n)])


def test_batch_layout():
  split = _toy_split(4)
  batch = translation.make_batch(split, np.array([2, 0, 2]), num_real=2, length=48)
  for row, i in enumerate([2, 0]):
    s, t = split.src[i], split.tgt[i]
    np.testing.assert_array_equal(batch["src"][row, : len(s)], s)
    assert not batch["src"][row, len(s):].any()
    np.testing.assert_array_equal(batch["tgt_in"][row, : len(t) + 1], np.r_[tokenizers.BOS_ID, t])
    np.testing.assert_array_equal(batch["tgt_out"][row, : len(t) + 1], np.r_[t, tokenizers.EOS_ID])
    assert not batch["tgt_in"][row, len(t) + 1:].any()
    assert not batch["tgt_out"][row, len(t) + 1:].any()
    assert batch["tgt_lengths"][row] == len(t) + 1 and batch["src_lengths"][row] == len(s)
  assert batch["mask"].tolist() == [1, 1, 0] and batch["index"].tolist() == [2, 0, 2]


@pytest.mark.parametrize("process_count", [1, 2])
def test_bucketing_keeps_every_example_once_per_epoch(process_count):
  split = _toy_split(1000)
  parts = [translation.TrainBatches(split, global_batch_size=64, seed=3, max_length=64,
                                    bucket_width=8, bucket_pool=4, process_index=p,
                                    process_count=process_count)
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
    batches = translation.TrainBatches(split, global_batch_size=50, seed=0, max_length=64,
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
  batches = translation.TrainBatches(_toy_split(300), global_batch_size=32, seed=1, max_length=64)
  it = iter(translation.training_stream(batches))
  for _ in range(12):  # Crosses an epoch boundary (10 batches per epoch).
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(translation.training_stream(batches))
  resumed.set_state(state)
  for e in expected:
    got = next(resumed)
    for k in e:
      np.testing.assert_array_equal(got[k], e[k])


def test_eval_batches_see_every_example_exactly_once():
  split = _toy_split(1014)
  for process_count in (1, 2):
    seen = []
    per_process = [list(translation.eval_batches(split, global_batch_size=64, max_length=64,
                                                 process_index=p, process_count=process_count))
                   for p in range(process_count)]
    assert len({len(b) for b in per_process}) == 1
    for batches in zip(*per_process):
      assert len({b["src"].shape for b in batches}) == 1
      for b in batches:
        seen.extend(b["index"][b["mask"] == 1])
    assert sorted(seen) == list(range(1014))
  batches = translation.eval_batches(split, global_batch_size=64, max_length=64)
  lengths = [b["src"].shape[1] for b in batches]
  assert lengths == sorted(lengths)  # Sorted by length: little padding.
