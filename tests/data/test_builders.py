import subprocess
import sys

import numpy as np
import pytest

from cnnrnn import data
from cnnrnn.data import builders
from tests.helpers import shared_dataset

# Label counts published with the MNIST copy in ../shared/datasets/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow
def test_mnist_builder_parses_the_original_files(data_dir):
  ds = data.load("mnist", data_dir, shared_dataset("mnist"))
  train, test = ds.split("train"), ds.split("test")
  assert (len(train), len(test), ds.num_classes) == (60_000, 10_000, 10)
  # One batched read per split (a lookup per record takes ~5x longer).
  labels = np.array([r["label"] for r in train.__getitems__(range(len(train)))])
  np.testing.assert_array_equal(np.bincount(labels), MNIST_TRAIN_COUNTS)
  labels = np.array([r["label"] for r in test.__getitems__(range(len(test)))])
  np.testing.assert_array_equal(np.bincount(labels), MNIST_TEST_COUNTS)
  image = train[0]["image"]
  assert image.shape == (28, 28, 1) and image.dtype == np.uint8 and image.max() == 255


@pytest.mark.slow
def test_fashion_mnist_builder(tmp_path):
  ds = data.load("fashion_mnist", str(tmp_path), shared_dataset("fashion_mnist"))
  assert (len(ds.split("train")), len(ds.split("test"))) == (60_000, 10_000)


def test_read_idx_rejects_other_files(tmp_path):
  bad = tmp_path / "bad-idx"
  bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # dtype code 0x0d: float, not uint8
  with pytest.raises(ValueError, match="unsigned-byte IDX"):
    builders.mnist.read_idx(str(bad))


def test_missing_files_error_says_what_to_put_where(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "train-images-idx3-ubyte.gz").write_bytes(b"")
  with pytest.raises(FileNotFoundError) as e:
    data.load("mnist", str(tmp_path / "tfds"), str(tmp_path / "manual"))
  msg = str(e.value)
  assert "train-labels-idx1-ubyte.gz" in msg and "t10k-images-idx3-ubyte.gz" in msg
  assert str(tmp_path / "manual") in msg and "cnnrnn.data.prepare" in msg


def test_unknown_dataset_names_the_known_ones(tmp_path):
  with pytest.raises(ValueError, match="mnist"):
    data.load("no_such_dataset", str(tmp_path))


def test_digits_split_is_fixed_and_stratified(data_dir):
  ds = data.load("digits", data_dir)
  train, test = ds.split("train"), ds.split("test")
  assert len(train) + len(test) == 1797
  test_labels = np.bincount([test[i]["label"] for i in range(len(test))], minlength=10)
  assert test_labels.min() >= 35  # ~1/5 of each class (174..183 per class).


@pytest.mark.slow
def test_preparing_and_reading_never_imports_tensorflow(tmp_path):
  code = (
      "import sys; from cnnrnn import data; "
      f"ds = data.load('digits', {str(tmp_path)!r}); ds.split('train')[0]; "
      "import cnnrnn.train; "
      "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


def test_only_image_datasets_get_image_preprocessing(data_dir):
  assert data.load("digits", data_dir).is_image
  text = data.load("ptb", data_dir, shared_dataset("ptb"))
  assert not text.is_image
  batch = {"text": np.array([b"a b"])}
  assert data.preprocessor({}, text, train=True)(batch) is batch


def _copy(src: str, dst) -> str:
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.copytree(src, dst)
  return str(dst)


def test_source_files_are_checked_before_preparing(tmp_path):
  # Fashion-MNIST's file names holding MNIST's files: refused by size, naming the file.
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz has 9,912,422 bytes, but "
                     r"train-images-idx3-ubyte.gz of dataset 'fashion_mnist' has 26,421,880"):
    data.load("fashion_mnist", str(tmp_path / "tfds"), shared_dataset("mnist"))
  # A truncated file (an EOFError deep in gzip before): refused by size, naming it.
  manual = _copy(shared_dataset("mnist"), tmp_path / "mnist")
  with open(f"{manual}/t10k-labels-idx1-ubyte.gz", "r+b") as f:
    f.truncate(1000)
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz has 1,000 bytes"):
    data.load("mnist", str(tmp_path / "tfds"), manual)
  # The same size, one byte changed: refused by sha256.
  manual = _copy(shared_dataset("tinyshakespeare"), tmp_path / "shakespeare")
  text = (tmp_path / "shakespeare" / "input.txt").read_bytes()
  (tmp_path / "shakespeare" / "input.txt").write_bytes(text[:-2] + b"?\n")
  with pytest.raises(ValueError, match=r"input.txt has sha256 [0-9a-f]{64}, not that of"):
    data.load("tiny_shakespeare", str(tmp_path / "tfds"), manual)


def test_prepared_copy_remembers_its_source_files(tmp_path, monkeypatch):
  tfds_dir = str(tmp_path / "tfds")
  data.load("tiny_shakespeare", tfds_dir, shared_dataset("tinyshakespeare"))
  data.load("tiny_shakespeare", tfds_dir, shared_dataset("tinyshakespeare"))  # Same files: reused.
  # Other files (allowed here by clearing the known checksums) do not reuse that copy.
  monkeypatch.setattr(builders.TinyShakespeare, "CHECKSUMS", {})
  manual = _copy(shared_dataset("tinyshakespeare"), tmp_path / "other")
  (tmp_path / "other" / "input.txt").write_text("To be, or not to be\n" * 1000)
  with pytest.raises(ValueError, match=r"was made from other files than those in .*other "
                     r"\(sha256 differs for input.txt\)"):
    data.load("tiny_shakespeare", tfds_dir, manual)
