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
  CHECKSUMS = {
      "train-images-idx3-ubyte.gz":
          (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
      "train-labels-idx1-ubyte.gz":
          (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
      "t10k-images-idx3-ubyte.gz":
          (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
      "t10k-labels-idx1-ubyte.gz":
          (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
  }


class FashionMnist(_IdxImages, skip_registration=True):
  """Fashion-MNIST (Xiao et al. 2017): Zalando article images, 60,000 / 10,000."""

  name = "fashion_mnist"
  MEAN, STD = (0.2860,), (0.3530,)
  URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
  CHECKSUMS = {
      "train-images-idx3-ubyte.gz":
          (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
      "train-labels-idx1-ubyte.gz":
          (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
      "t10k-images-idx3-ubyte.gz":
          (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
      "t10k-labels-idx1-ubyte.gz":
          (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
  }
  CLASS_NAMES = (
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
  )
