"""Datasets generated deterministically from the real MNIST files: Moving MNIST clips and
MNIST with captions, for the CNN + RNN hybrids (no download besides MNIST itself).

- `moving_mnist` (Srivastava et al. 2015): clips of T frames, S x S, with one or two 28x28
  digits bouncing off the borders (frames are the pixel-wise max of the digits). Labels:
  `label`, the identity of the first digit (a single frame shows it), and `direction`, the
  first digit's direction of motion at the start (from frame 0 to frame 1; `DIRECTIONS`),
  which no single frame can tell. The first digit starts far enough from the borders that
  its first step is never a bounce. Optionally clips of different lengths (`min_frames`):
  frames past `seq_lengths` are black.
- `mnist_captions` (after Mansimov et al. 2016): an S x S canvas (60 by default) with two
  digits side by side or one above the other at small random offsets, and a template
  caption over their 22-word vocabulary, e.g. "the digit 3 is on the left of the digit 7 ."
  (`caption`: token ids, `CAPTION_VOCAB`; pad 0, unk 1, bos 2, eos 3 as in `cnnrnn.decode`).

Train examples use only MNIST's training images, test examples only its test images, so no
test digit was seen in training. Example i of a split depends only on (seed, split, i) and
the MNIST files, so every size and every order of generation gives the same examples. Sizes
and shapes are builder-config fields set from `config.dataset` (`builder_kwargs`); each
setting is prepared once into its own folder, named after the setting.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import base
from cnnrnn.data.builders.mnist import Mnist, read_idx
from cnnrnn.data.options import Option

DIGIT = 28
DIRECTIONS = ("down-right", "down-left", "up-right", "up-left")  # (sign dy, sign dx)
_SPLIT_CODE = {"train": 0, "test": 1}

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
WORDS = (*"0123456789", "the", "digit", "is", "on", "at", "left", "right", "bottom", "top",
         "of", "image", ".")  # Mansimov et al.'s 22 words
CAPTION_VOCAB = (*SPECIAL_TOKENS, *WORDS)
CAPTION_LENGTH = 12  # every template has 12 tokens
_RELATIONS = {  # (layout, subject comes first) -> relation words
    (0, True): ("on", "the", "left"), (0, False): ("on", "the", "right"),
    (1, True): ("at", "the", "top"), (1, False): ("at", "the", "bottom"),
}


def encode_caption(words: list[str]) -> np.ndarray:
  """Words -> token ids of `CAPTION_VOCAB` (unknown words -> unk)."""
  index = {w: i for i, w in enumerate(CAPTION_VOCAB)}
  return np.array([index.get(w, 1) for w in words], np.int32)


def decode_caption(ids) -> str:
  """Token ids -> text, stopping at the first eos and skipping pad/bos."""
  words = []
  for i in np.asarray(ids).tolist():
    if i == 3:
      break
    if i > 3:
      words.append(CAPTION_VOCAB[i])
  return " ".join(words)


def _rng(seed: int, split: str, i: int) -> np.random.Generator:
  return np.random.default_rng([seed, _SPLIT_CODE[split], i])


def _paste(canvas: np.ndarray, digit: np.ndarray, y: int, x: int) -> None:
  """canvas[y:y+28, x:x+28] = max(canvas, digit), in place."""
  region = canvas[y:y + DIGIT, x:x + DIGIT]
  np.maximum(region, digit, out=region)


def moving_mnist_example(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, *,
                         num_frames: int, size: int, num_digits: int, speed: int,
                         min_frames: int = 0) -> dict:
  """One Moving MNIST clip (see the module docstring).

  Args:
    rng: the example's generator.
    images: [N, 28, 28] uint8 MNIST digits to draw from; labels: [N] their classes.
    num_frames: T; size: S (>= 28 + 2 * speed); num_digits: digits per clip; speed: pixels
      per frame along each axis; min_frames: if > 0, the clip's length is uniform in
      [min_frames, T] and later frames are black.

  Returns:
    {"image" [T, S, S, 1] uint8, "label", "direction", "digits" [D], "digit_index" [D],
     "positions" [T, D, 2] (top-left y, x of each digit), "seq_lengths"}.
  """
  limit = size - DIGIT
  index = rng.integers(0, len(images), num_digits)
  direction = int(rng.integers(0, len(DIRECTIONS)))
  frames = np.zeros((num_frames, size, size, 1), np.uint8)
  positions = np.zeros((num_frames, num_digits, 2), np.int64)
  for d in range(num_digits):
    if d == 0:  # Away from the borders: the first step follows the labelled direction.
      pos = rng.integers(speed, limit - speed + 1, 2)
      vel = np.array([1 if direction in (0, 1) else -1, 1 if direction in (0, 2) else -1])
    else:
      pos = rng.integers(0, limit + 1, 2)
      vel = rng.choice([-1, 1], 2)
    vel = vel * speed
    for t in range(num_frames):
      positions[t, d] = pos
      pos = pos + vel
      for axis in range(2):  # Bounce off the borders.
        if pos[axis] < 0:
          pos[axis], vel[axis] = -pos[axis], -vel[axis]
        elif pos[axis] > limit:
          pos[axis], vel[axis] = 2 * limit - pos[axis], -vel[axis]
  length = int(rng.integers(min_frames, num_frames + 1)) if min_frames else num_frames
  for t in range(length):
    for d in range(num_digits):
      _paste(frames[t, ..., 0], images[index[d]], *positions[t, d])
  return {"image": frames, "label": int(labels[index[0]]), "direction": direction,
          "digits": labels[index].astype(np.int64), "digit_index": index.astype(np.int64),
          "positions": positions, "seq_lengths": np.int32(length)}


def caption_example(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, *,
                    size: int, jitter: int) -> dict:
  """One MNIST-with-captions canvas and its caption (see the module docstring).

  Args:
    rng: the example's generator.
    images: [N, 28, 28] uint8 MNIST digits; labels: [N] their classes.
    size: canvas side S (>= 56 + jitter).
    jitter: largest extra offset of each digit along the layout axis.

  Returns:
    {"image" [S, S, 1] uint8, "caption" [12] int32, "digits" [2] (subject, object),
     "digit_index" [2], "offsets" [2, 2] (top-left y, x of subject and object), "layout"
     (0: side by side, 1: one above the other)}.
  """
  index = rng.integers(0, len(images), 2)  # first: left or top
  layout = int(rng.integers(0, 2))
  free = size - DIGIT  # range of the other axis
  offsets = np.zeros((2, 2), np.int64)
  along, across = (1, 0) if layout == 0 else (0, 1)
  offsets[0, along] = rng.integers(0, jitter + 1)
  offsets[1, along] = DIGIT + rng.integers(0, min(jitter, free - DIGIT) + 1)
  offsets[:, across] = rng.integers(0, free + 1, 2)
  canvas = np.zeros((size, size, 1), np.uint8)
  for k in range(2):
    _paste(canvas[..., 0], images[index[k]], *offsets[k])
  first_is_subject = bool(rng.integers(0, 2))
  order = [0, 1] if first_is_subject else [1, 0]
  subject, obj = (int(labels[index[k]]) for k in order)
  words = ["the", "digit", str(subject), "is", *_RELATIONS[layout, first_is_subject], "of",
           "the", "digit", str(obj), "."]
  return {"image": canvas, "caption": encode_caption(words),
          "digits": np.array([subject, obj], np.int64),
          "digit_index": index[order].astype(np.int64),
          "offsets": offsets[order], "layout": layout}


@dataclasses.dataclass
class MovingMnistConfig(tfds.core.BuilderConfig):
  """Attributes: num_frames (T), size (S), num_digits, speed (pixels per frame per axis),
  min_frames (0: every clip has T frames), num_train, num_test, seed."""

  num_frames: int = 20
  size: int = 64
  num_digits: int = 1
  speed: int = 3
  min_frames: int = 0
  num_train: int = 10_000
  num_test: int = 2_000
  seed: int = 0


@dataclasses.dataclass
class MnistCaptionsConfig(tfds.core.BuilderConfig):
  """Attributes: size (S), jitter (extra offset along the layout axis), num_train, num_test,
  seed."""

  size: int = 60
  jitter: int = 4
  num_train: int = 10_000
  num_test: int = 2_000
  seed: int = 0


def _config_fields(config_cls) -> dict[str, dataclasses.Field]:
  """The fields of a builder config class beyond TFDS's own (name, version, ...)."""
  base_fields = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  return {f.name: f for f in dataclasses.fields(config_cls) if f.name not in base_fields}


class _FromMnist(base.RawFilesBuilder, skip_registration=True):
  """Generated from MNIST's IDX files (the same files, URL and `manual_dir` as `mnist`)."""

  FILES, URL = Mnist.FILES, Mnist.URL
  MEAN, STD = Mnist.MEAN, Mnist.STD
  VERSION = tfds.core.Version("1.0.0")
  CONFIG_CLS: type = tfds.core.BuilderConfig

  @classmethod
  def config_options(cls) -> dict:
    """Its builder config's attributes, integers (num_train, num_test >= 1; others >= 0)."""
    return {k: Option(int, minimum=1 if k in ("num_train", "num_test") else 0)
            for k in _config_fields(cls.CONFIG_CLS)}

  @classmethod
  def builder_kwargs(cls, options: dict) -> dict:
    """The builder config of the `config.dataset` fields named like its attributes."""
    fields = _config_fields(cls.CONFIG_CLS)
    values = {k: int(options[k]) for k in fields if options.get(k) is not None}
    values = {k: values.get(k, f.default) for k, f in fields.items()}
    name = "_".join(f"{k}{v}" for k, v in values.items())
    return {"config": cls.CONFIG_CLS(name=name, version=cls.VERSION, **values)}

  def _split_generators(self, dl_manager):
    files = self._files(dl_manager)
    cfg = self.builder_config
    return {
        "train": self._generate_examples("train", files["train-images-idx3-ubyte.gz"],
                                         files["train-labels-idx1-ubyte.gz"], cfg.num_train),
        "test": self._generate_examples("test", files["t10k-images-idx3-ubyte.gz"],
                                        files["t10k-labels-idx1-ubyte.gz"], cfg.num_test),
    }

  def _generate_examples(self, split, images_path, labels_path, num):
    images, labels = read_idx(images_path), read_idx(labels_path)
    for i in range(num):
      yield i, self.example(_rng(self.builder_config.seed, split, i), images, labels)

  def example(self, rng, images, labels) -> dict:
    raise NotImplementedError


class MovingMnist(_FromMnist, skip_registration=True):
  """Moving MNIST clips (module docstring); config fields from `config.dataset`."""

  name = "moving_mnist"
  RELEASE_NOTES = {"1.0.0": "Generated from the MNIST IDX files."}
  CONFIG_CLS = MovingMnistConfig
  BUILDER_CONFIGS = [MovingMnistConfig(name="default")]

  def _info(self):
    c = self.builder_config
    t, s, d = c.num_frames, c.size, c.num_digits
    if s < DIGIT + 2 * c.speed + 1:
      raise ValueError(f"dataset.size={s} is too small for 28x28 digits moving "
                       f"{c.speed} pixels a frame; allowed: >= {DIGIT + 2 * c.speed + 1}")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(t, s, s, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
            "direction": tfds.features.ClassLabel(names=list(DIRECTIONS)),
            "digits": tfds.features.Tensor(shape=(d,), dtype=np.int64),
            "digit_index": tfds.features.Tensor(shape=(d,), dtype=np.int64),
            "positions": tfds.features.Tensor(shape=(t, d, 2), dtype=np.int64),
            "seq_lengths": tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        disable_shuffling=True,  # example i is record i (a prefix of a larger split)
        homepage="https://www.cs.toronto.edu/~nitish/unsupervised_video/",
    )

  def example(self, rng, images, labels) -> dict:
    c = self.builder_config
    return moving_mnist_example(rng, images, labels, num_frames=c.num_frames, size=c.size,
                                num_digits=c.num_digits, speed=c.speed, min_frames=c.min_frames)


class MnistCaptions(_FromMnist, skip_registration=True):
  """MNIST with captions (module docstring); config fields from `config.dataset`."""

  name = "mnist_captions"
  RELEASE_NOTES = {"1.0.0": "Generated from the MNIST IDX files."}
  CONFIG_CLS = MnistCaptionsConfig
  BUILDER_CONFIGS = [MnistCaptionsConfig(name="default")]

  def _info(self):
    c = self.builder_config
    if c.size < 2 * DIGIT + c.jitter:
      raise ValueError(f"dataset.size={c.size} cannot hold two digits with jitter {c.jitter}; "
                       f"allowed: >= {2 * DIGIT + c.jitter}")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(c.size, c.size, 1), dtype=np.uint8),
            "caption": tfds.features.Tensor(shape=(CAPTION_LENGTH,), dtype=np.int32),
            "digits": tfds.features.Tensor(shape=(2,), dtype=np.int64),
            "digit_index": tfds.features.Tensor(shape=(2,), dtype=np.int64),
            "offsets": tfds.features.Tensor(shape=(2, 2), dtype=np.int64),
            "layout": tfds.features.Tensor(shape=(), dtype=np.int64),
        }),
        disable_shuffling=True,  # example i is record i (a prefix of a larger split)
        homepage="https://arxiv.org/abs/1511.02793",
    )

  def example(self, rng, images, labels) -> dict:
    c = self.builder_config
    return caption_example(rng, images, labels, size=c.size, jitter=c.jitter)
