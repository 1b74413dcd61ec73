"""Batch-level image preprocessing on the host (numpy), deterministic given an rng."""

import dataclasses

import numpy as np

AUGMENTATIONS = ("none", "crop_flip")


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
  """uint8 [B, H, W, C] images -> normalised float32, optionally padded and augmented.

  Attributes:
    mean: per-channel mean, in [0, 1] units.
    std: per-channel standard deviation, in [0, 1] units.
    pad_to: pad symmetrically with black (pixel 0, before normalising) to this square
      size (28 -> 32 for LeNet-5, as in the paper); None keeps the size.
    augment: "none", or "crop_flip": pad by `crop_padding` pixels, take a random crop of
      the original size and flip horizontally with probability 1/2 (He et al. 2015).
    crop_padding: pixels of zero padding for "crop_flip".
  """

  mean: tuple[float, ...]
  std: tuple[float, ...]
  pad_to: int | None = None
  augment: str = "none"
  crop_padding: int = 4

  def __post_init__(self):
    if self.augment not in AUGMENTATIONS:
      raise ValueError(f"dataset.augment={self.augment!r}; allowed: {AUGMENTATIONS}")

  def __call__(self, batch: dict, rng: np.random.Generator | None = None) -> dict:
    images = batch["image"]  # (B, H, W, C) uint8
    if self.pad_to is not None:
      h, w = images.shape[1:3]
      if self.pad_to < max(h, w):
        raise ValueError(f"dataset.pad_to={self.pad_to} is smaller than the images ({h}x{w})")
      top, left = (self.pad_to - h) // 2, (self.pad_to - w) // 2
      pad = ((0, 0), (top, self.pad_to - h - top), (left, self.pad_to - w - left), (0, 0))
      images = np.pad(images, pad)  # Pixel value 0: the background, before normalising.
    if self.augment == "crop_flip":
      if rng is None:
        raise ValueError("augment='crop_flip' needs an rng (training pipeline only)")
      images = _random_crop_flip(images, self.crop_padding, rng)
    mean = np.asarray(self.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(self.std, np.float32) * 255.0)
    out = dict(batch)
    out["image"] = (images.astype(np.float32) - mean) * inv_std
    out["label"] = batch["label"].astype(np.int32)
    return out


def _random_crop_flip(images: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  dy = rng.integers(0, 2 * padding + 1, size=b)
  dx = rng.integers(0, 2 * padding + 1, size=b)
  flip = rng.random(b) < 0.5
  out = np.empty_like(images)
  for i in range(b):
    crop = padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    out[i] = crop[:, ::-1] if flip[i] else crop
  return out
