"""Batch-level image preprocessing on the host (numpy), deterministic given an rng.

Two families:
- Fixed-size datasets (MNIST, CIFAR): optional padding, and "crop_flip" (pad by 4, random
  crop back to the original size, horizontal flip; He et al. 2015).
- ImageNet-style (any image size, `image_size` set): training with "random_resized_crop"
  (a crop of 8-100% of the area and aspect ratio 3/4-4/3, resized to image_size x
  image_size, then a horizontal flip; Szegedy et al. 2015, torchvision's
  RandomResizedCrop), evaluation and augment="none" with "resize + center crop" (shorter
  side to image_size / crop_fraction, 224 / 0.875 = 256, then the central image_size
  square). Images may differ in size within a batch (a ragged object array).
"""

import dataclasses
import math

import numpy as np
from PIL import Image

AUGMENTATIONS = ("none", "crop_flip", "random_resized_crop")


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
  """uint8 [B, H, W, C] images (or a ragged object array of [H, W, C]) -> normalised
  float32 [B, H', W', C], optionally resized, padded and augmented.

  Attributes:
    mean: per-channel mean, in [0, 1] units.
    std: per-channel standard deviation, in [0, 1] units.
    pad_to: pad symmetrically with black (pixel 0, before normalising) to this square
      size (28 -> 32 for LeNet-5, as in the paper); None keeps the size.
    augment: "none", "crop_flip" (pad by `crop_padding` pixels, take a random crop of
      the original size and flip horizontally with probability 1/2), or
      "random_resized_crop" (needs `image_size`; see the module doc).
    crop_padding: pixels of zero padding for "crop_flip".
    image_size: output side for ImageNet-style preprocessing; None keeps the size.
    crop_fraction: evaluation's center crop covers this fraction of the resized
      shorter side.
    area_range: random_resized_crop's range of crop area fractions.
    aspect_range: random_resized_crop's range of aspect ratios (w / h).
  """

  mean: tuple[float, ...]
  std: tuple[float, ...]
  pad_to: int | None = None
  augment: str = "none"
  crop_padding: int = 4
  image_size: int | None = None
  crop_fraction: float = 0.875
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3)

  def __post_init__(self):
    if self.augment not in AUGMENTATIONS:
      raise ValueError(f"dataset.augment={self.augment!r}; allowed: {AUGMENTATIONS}")
    if self.augment == "random_resized_crop" and not self.image_size:
      raise ValueError("dataset.augment='random_resized_crop' needs dataset.image_size (e.g. 224)")
    if self.image_size is not None and self.image_size < 1:
      raise ValueError(f"dataset.image_size={self.image_size}; allowed: a positive integer")
    if not 0.0 < self.crop_fraction <= 1.0:
      raise ValueError(f"dataset.crop_fraction={self.crop_fraction}; allowed: (0, 1]")

  def __call__(self, batch: dict, rng: np.random.Generator | None = None) -> dict:
    images = batch["image"]  # [B, H, W, C] uint8, or ragged
    if self.augment != "none" and rng is None:
      raise ValueError(f"augment={self.augment!r} needs an rng (training pipeline only)")
    if self.image_size is not None:
      if self.augment == "random_resized_crop":
        images = np.stack([_random_resized_crop(im, self.image_size, self.area_range,
                                                self.aspect_range, rng) for im in images])
      else:
        images = np.stack([resize_center_crop(im, self.image_size, self.crop_fraction)
                           for im in images])
    elif images.dtype == object:
      raise ValueError("images of different sizes need dataset.image_size (e.g. 224)")
    if self.pad_to is not None:
      h, w = images.shape[1:3]
      if self.pad_to < max(h, w):
        raise ValueError(f"dataset.pad_to={self.pad_to} is smaller than the images ({h}x{w})")
      top, left = (self.pad_to - h) // 2, (self.pad_to - w) // 2
      pad = ((0, 0), (top, self.pad_to - h - top), (left, self.pad_to - w - left), (0, 0))
      images = np.pad(images, pad)  # Pixel value 0: the background, before normalising.
    if self.augment == "crop_flip":
      images = _random_crop_flip(images, self.crop_padding, rng)
    mean = np.asarray(self.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(self.std, np.float32) * 255.0)
    out = dict(batch)
    out["image"] = (images.astype(np.float32) - mean) * inv_std
    if "label" in batch:  # Captioning data has none.
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


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a uint8 [H, W, C] image (PIL, antialiased when shrinking)."""
  if image.shape[:2] == (height, width):
    return image
  channels = image.shape[2]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out[..., None] if channels == 1 else out


def resize_center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation preprocessing: the shorter side to round(size / crop_fraction) (aspect
  kept), then the central size x size square. uint8 [H, W, C] -> [size, size, C]."""
  h, w = image.shape[:2]
  short = int(round(size / crop_fraction))
  # Sizes and offsets as torchvision's Resize(short) + CenterCrop(size) compute them.
  if h <= w:
    new_h, new_w = short, int(short * w / h)
  else:
    new_h, new_w = int(short * h / w), short
  image = _resize(image, new_h, new_w)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return image[top : top + size, left : left + size]


def random_resized_crop_box(height: int, width: int, area_range, aspect_range,
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(top, left, crop height, crop width) of a random crop with area fraction in
  `area_range` and aspect ratio w/h log-uniform in `aspect_range`; after 10 failed tries,
  the central crop with the aspect ratio clamped to the range (as torchvision)."""
  area = height * width
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(10):
    target = area * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  ratio = width / height
  if ratio < aspect_range[0]:
    w, h = width, int(round(width / aspect_range[0]))
  elif ratio > aspect_range[1]:
    h, w = height, int(round(height * aspect_range[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _random_resized_crop(image: np.ndarray, size: int, area_range, aspect_range,
                         rng: np.random.Generator) -> np.ndarray:
  top, left, h, w = random_resized_crop_box(*image.shape[:2], area_range, aspect_range, rng)
  crop = _resize(image[top : top + h, left : left + w], size, size)
  return crop[:, ::-1] if rng.random() < 0.5 else crop
