"""MNIST and Fashion-MNIST from the original IDX files (no TensorFlow)."""

import gzip

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import base


def read_idx(path: str) -> np.ndarray:
  """Reads a (gzipped) IDX file: big-endian magic, dims, then uint8 data."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
  dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
  return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class _IdxImages(base.RawFilesBuilder, skip_registration=True):
  """28x28 grey images and 10-way labels in the four-file IDX layout."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Parsed from the IDX files; images as raw uint8 tensors."}
  FILES = (
      "train-images-idx3-ubyte.gz",
      "train-labels-idx1-ubyte.gz",
      "t10k-images-idx3-ubyte.gz",
      "t10k-labels-idx1-ubyte.gz",
  )
  CLASS_NAMES: tuple[str, ...] | None = None
  HOMEPAGE = ""

  def _info(self):
    label = (
        tfds.features.ClassLabel(names=list(self.CLASS_NAMES))
        if self.CLASS_NAMES
        else tfds.features.ClassLabel(num_classes=10)
    )
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {"image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8), "label": label}
        ),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager):
    files = self._files(dl_manager)
    return {
        "train": self._generate_examples(
            files["train-images-idx3-ubyte.gz"], files["train-labels-idx1-ubyte.gz"]
        ),
        "test": self._generate_examples(
            files["t10k-images-idx3-ubyte.gz"], files["t10k-labels-idx1-ubyte.gz"]
        ),
    }

  def _generate_examples(self, images_path, labels_path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if len(images) != len(labels):
      raise ValueError(f"{images_path}: {len(images)} images but {len(labels)} labels")
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}


class Mnist(_IdxImages, skip_registration=True):
  """MNIST handwritten digits (LeCun & Cortes): 60,000 train / 10,000 test."""

  name = "mnist"
  MEAN, STD = (0.1307,), (0.3081,)
  URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


class FashionMnist(_IdxImages, skip_registration=True):
  """Fashion-MNIST (Xiao et al. 2017): Zalando article images, 60,000 / 10,000."""

  name = "fashion_mnist"
  MEAN, STD = (0.2860,), (0.3530,)
  URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
  CLASS_NAMES = (
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
  )
