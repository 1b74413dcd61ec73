"""Digit scenes for semantic segmentation, generated from the real MNIST files.

`digit_scenes`: an S x S canvas (64 by default) with `num_digits` 28x28 MNIST digits at
uniformly random positions (they may overlap; the canvas is the pixel-wise max). Every pixel
is labelled in `segmentation` [S, S] uint8: 0 for background, 1 + the digit's class for a
pixel where some digit's intensity is at least `THRESHOLD` (the digit drawing the brightest
value there; the later digit on a tie). So there are 11 classes per pixel.

As for the other generated datasets (`mnist_generated`): train scenes use only MNIST's
training images, test scenes only its test images; example i of a split depends only on
(seed, split, i) and the MNIST files; sizes are builder-config fields set from
`config.dataset` (`size`, `num_digits`, `num_train`, `num_test`, `seed`).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import mnist_generated

DIGIT = mnist_generated.DIGIT
THRESHOLD = 64  # of 255: stroke pixels; MNIST's faint anti-aliased rims count as background
NUM_CLASSES = 11  # background + 10 digits


def scene_example(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, *,
                  size: int, num_digits: int) -> dict:
  """One scene and its per-pixel labels (module docstring).

  Args:
    rng: the example's generator.
    images: [N, 28, 28] uint8 MNIST digits; labels: [N] their classes.
    size: canvas side S (>= 28).
    num_digits: digits per scene.

  Returns:
    {"image" [S, S, 1] uint8, "segmentation" [S, S] uint8 in 0..10, "digits" [D] classes,
     "digit_index" [D], "offsets" [D, 2] (top-left y, x of each digit)}.
  """
  index = rng.integers(0, len(images), num_digits)
  offsets = rng.integers(0, size - DIGIT + 1, (num_digits, 2))
  canvas = np.zeros((size, size), np.uint8)
  best = np.zeros((size, size), np.int32)  # brightest value drawn so far (-1: none)
  seg = np.zeros((size, size), np.uint8)
  for d in range(num_digits):
    y, x = offsets[d]
    digit = images[index[d]]
    region = (slice(y, y + DIGIT), slice(x, x + DIGIT))
    wins = (digit >= THRESHOLD) & (digit.astype(np.int32) >= best[region])
    seg[region] = np.where(wins, labels[index[d]] + 1, seg[region])
    best[region] = np.where(wins, digit, best[region])
    np.maximum(canvas[region], digit, out=canvas[region])
  return {"image": canvas[..., None], "segmentation": seg,
          "digits": labels[index].astype(np.int64), "digit_index": index.astype(np.int64),
          "offsets": offsets.astype(np.int64)}


@dataclasses.dataclass
class DigitScenesConfig(tfds.core.BuilderConfig):
  """Attributes: size (S), num_digits, num_train, num_test, seed."""

  size: int = 64
  num_digits: int = 3
  num_train: int = 10_000
  num_test: int = 2_000
  seed: int = 0


class DigitScenes(mnist_generated._FromMnist, skip_registration=True):  # pylint: disable=protected-access
  """MNIST digit scenes with per-pixel labels (module docstring)."""

  name = "digit_scenes"
  RELEASE_NOTES = {"1.0.0": "Generated from the MNIST IDX files."}
  CONFIG_CLS = DigitScenesConfig
  BUILDER_CONFIGS = [DigitScenesConfig(name="default")]

  def _info(self):
    c = self.builder_config
    if c.size < DIGIT:
      raise ValueError(f"dataset.size={c.size} cannot hold a 28x28 digit; allowed: >= {DIGIT}")
    if c.num_digits < 1:
      raise ValueError(f"dataset.num_digits={c.num_digits}; allowed: an integer >= 1")
    d = c.num_digits
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(c.size, c.size, 1), dtype=np.uint8),
            "segmentation": tfds.features.Tensor(shape=(c.size, c.size), dtype=np.uint8),
            "digits": tfds.features.Tensor(shape=(d,), dtype=np.int64),
            "digit_index": tfds.features.Tensor(shape=(d,), dtype=np.int64),
            "offsets": tfds.features.Tensor(shape=(d, 2), dtype=np.int64),
        }),
        disable_shuffling=True,  # example i is record i (a prefix of a larger split)
        homepage="http://yann.lecun.com/exdb/mnist/",
    )

  def example(self, rng, images, labels) -> dict:
    c = self.builder_config
    return scene_example(rng, images, labels, size=c.size, num_digits=c.num_digits)
