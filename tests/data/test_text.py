import math
import os
import subprocess
import sys

import numpy as np
import pytest

from cnnrnn import data
from cnnrnn.data import text
from tests.helpers import shared_dataset

# Mikolov's PTB as documented in ../shared/datasets/README.md: tokens with one <eos> per line.
PTB_TOKENS = {"train": 929_589, "validation": 73_760, "test": 82_430}
PTB_LINES = {"train": 42_068, "validation": 3_370, "test": 3_761}


@pytest.fixture(scope="module")
def ptb(data_dir):
  return text.load_corpus(data.load("ptb", data_dir, shared_dataset("ptb")))


def test_ptb_counts_and_vocabulary(ptb):
  assert {s: len(t) for s, t in ptb.splits.items()} == PTB_TOKENS
  assert len(ptb.vocab) == 10_000 and ptb.vocab.level == "word" and ptb.vocab.unk == "<unk>"
  eos = ptb.vocab.token_id("<eos>")
  assert {s: int((t == eos).sum()) for s, t in ptb.splits.items()} == PTB_LINES
  # Most frequent first, ties alphabetical.
  counts = np.bincount(ptb.splits["train"], minlength=len(ptb.vocab))
  assert (np.diff(counts) <= 0).all() and ptb.vocab.tokens[:3] == ("the", "<unk>", "<eos>")


def test_ptb_stream_is_the_file_in_order(ptb):
  with open(os.path.join(shared_dataset("ptb"), "ptb.valid.txt")) as f:
    reference = f.read().replace("\n", " <eos> ").split()  # Zaremba et al.'s reader.
  np.testing.assert_array_equal(ptb.splits["validation"], ptb.vocab.encode_tokens(reference))


def test_tiny_shakespeare_characters_and_splits(data_dir):
  folder = shared_dataset("tinyshakespeare")
  corpus = text.load_corpus(data.load("tiny_shakespeare", data_dir, folder))
  assert len(corpus.vocab) == 65 and corpus.vocab.level == "char"
  sizes = {s: len(t) for s, t in corpus.splits.items()}
  assert sizes == {"train": 1_003_854, "validation": 55_770, "test": 55_770}
  assert sum(sizes.values()) == 1_115_394
  with open(os.path.join(folder, "input.txt"), encoding="utf-8", newline="") as f:
    original = f.read()
  decoded = "".join(corpus.vocab.decode(corpus.splits[s]) for s in ("train", "validation", "test"))
  assert decoded == original


def test_vocabulary_order_encode_decode():
  vocab = text.Vocabulary.build(text.tokenize("b a c\na b\n", "word"), "word", unk="<unk>")
  assert vocab.tokens == ("<eos>", "a", "b", "c", "<unk>")  # Ties: "<" sorts before "a".
  ids = vocab.encode("a b zebra\nc\n")
  np.testing.assert_array_equal(ids, [1, 2, 4, 0, 3, 0])
  assert ids.dtype == np.int32
  assert vocab.decode(vocab.encode("a  b\nc")) == "a b\nc"
  chars = text.Vocabulary.build("hello", "char")
  assert chars.decode(chars.encode("hole")) == "hole"
  with pytest.raises(ValueError, match="'z'"):
    chars.encode("hz")
  with pytest.raises(ValueError, match="word, char"):
    text.tokenize("x", "byte")


def _batches(num_tokens, batch_size, seq_len, train, process_index=0, process_count=1):
  # Token i is i, so every id is its position in the stream.
  return text.LanguageModelBatches(
      np.arange(num_tokens), global_batch_size=batch_size, seq_len=seq_len, train=train,
      process_index=process_index, process_count=process_count)


@pytest.mark.parametrize("train", [True, False])
def test_windows_continue_the_streams(train):
  batches = _batches(1000, 4, 7, train)
  previous = None
  for j, b in enumerate(batches):
    assert b["inputs"].shape == b["targets"].shape == b["mask"].shape == (4, 7)
    assert b["reset"].shape == (4,) and b["reset"].all() == b["reset"].any() == (j == 0)
    real = b["mask"] > 0
    np.testing.assert_array_equal(b["targets"][real], b["inputs"][real] + 1)
    if previous is not None:  # Each row picks up where it ended in the previous batch.
      np.testing.assert_array_equal(b["inputs"][:, 0], previous["targets"][:, -1])
    previous = b
  first = batches[0]["inputs"][:, 0]
  np.testing.assert_array_equal(first, np.arange(4) * first[1])  # Contiguous rows.


def test_training_drops_the_remainder_and_repeats_epochs():
  batches = _batches(1000, 4, 7, train=True)
  assert len(batches) == (999 // 4) // 7  # 249 targets per row, 35 full windows.
  assert all(b["mask"].all() for b in batches)
  np.testing.assert_array_equal(batches[len(batches)]["inputs"], batches[0]["inputs"])
  assert batches[len(batches)]["reset"].all() and not batches[len(batches) + 1]["reset"].any()


@pytest.mark.parametrize(
    "num_tokens,batch_size,seq_len",
    [(1000, 4, 7), (1001, 4, 10), (10, 4, 3), (50, 1, 49), (8, 16, 5)],
)
def test_evaluation_counts_every_target_once(num_tokens, batch_size, seq_len):
  batches = _batches(num_tokens, batch_size, seq_len, train=False)
  targets = np.concatenate([b["targets"][b["mask"] > 0] for b in batches])
  assert sum(b["mask"].sum() for b in batches) == num_tokens - 1
  np.testing.assert_array_equal(np.sort(targets), np.arange(1, num_tokens))


@pytest.mark.parametrize("train", [True, False])
def test_process_shards_are_disjoint_and_complete(train):
  whole = list(_batches(997, 8, 5, train))
  for count in (2, 4, 8):
    shards = [list(_batches(997, 8, 5, train, p, count)) for p in range(count)]
    assert all(len(s) == len(whole) for s in shards)
    for j, b in enumerate(whole):
      for key in b:
        np.testing.assert_array_equal(np.concatenate([s[j][key] for s in shards]), b[key])


def test_train_iterator_resumes_at_the_next_window():
  tokens = np.arange(500)
  it = iter(text.training_stream(text.LanguageModelBatches(
      tokens, global_batch_size=2, seq_len=10, train=True)))
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["inputs"] for _ in range(30)]  # Crosses an epoch boundary (24).
  fresh = iter(text.training_stream(text.LanguageModelBatches(
      tokens, global_batch_size=2, seq_len=10, train=True)))
  fresh.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(fresh)["inputs"], e)


def test_batching_errors_name_the_field():
  with pytest.raises(ValueError, match="batch_size=20 streams of seq_len=35"):
    _batches(500, 20, 35, train=True)
  with pytest.raises(ValueError, match="eval_batch_size=6 does not divide over 4"):
    _batches(500, 6, 5, train=False, process_count=4)
  with pytest.raises(ValueError, match="seq_len=0"):
    _batches(500, 2, 0, train=True)


def test_perplexity_and_bits():
  assert text.perplexity(100 * math.log(10_000), 100) == pytest.approx(10_000)
  assert text.bits_per_token(50 * math.log(2), 50) == pytest.approx(1.0)


@pytest.mark.parametrize("name,present", [("ptb", "ptb.train.txt"), ("tiny_shakespeare", None)])
def test_missing_files_error_names_them(tmp_path, name, present):
  (tmp_path / "manual").mkdir()
  if present:
    (tmp_path / "manual" / present).write_text("")
  with pytest.raises(FileNotFoundError) as e:
    data.load(name, str(tmp_path / "tfds"), str(tmp_path / "manual"))
  msg = str(e.value)
  missing = ["ptb.valid.txt", "ptb.test.txt"] if name == "ptb" else ["input.txt"]
  assert all(f in msg for f in missing) and str(tmp_path / "manual") in msg


def test_text_data_never_imports_tensorflow(tmp_path):
  folder = shared_dataset("tinyshakespeare")
  code = (
      "import sys; from cnnrnn import data; from cnnrnn.data import text; "
      f"c = text.load_corpus(data.load('tiny_shakespeare', {str(tmp_path)!r}, {folder!r})); "
      "next(iter(text.training_stream(text.LanguageModelBatches("
      "c.splits['train'], global_batch_size=4, seq_len=8, train=True)))); "
      "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
