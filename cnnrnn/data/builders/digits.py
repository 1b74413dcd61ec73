"""scikit-learn's bundled 8x8 handwritten digits, as a TFDS dataset (offline quickstart)."""

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import base


class Digits(base.RawFilesBuilder, skip_registration=True):
  """UCI optical handwritten digits (1,797 images, 8x8, 17 grey levels) shipped inside
  scikit-learn. A fixed, class-stratified split (every fifth example of each class goes to
  test): 1,433 train / 364 test."""

  name = "digits"
  MEAN, STD = (0.3052,), (0.3756,)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From scikit-learn's bundled copy; images as raw uint8 tensors."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {"image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
             "label": tfds.features.ClassLabel(num_classes=10)}
        ),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn.
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    # 0..16 grey levels -> 0..255 (16 * 255 / 16 rounds to 255).
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    is_test = np.zeros(len(labels), bool)
    for c in range(10):  # Every fifth example of each class goes to test.
      members = order[labels[order] == c]
      is_test[members[::5]] = True
    return {
        "train": self._generate_examples(images[~is_test], labels[~is_test]),
        "test": self._generate_examples(images[is_test], labels[is_test]),
    }

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}
