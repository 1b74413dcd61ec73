"""ImageNet-style preprocessing: random-resized crops for training, resize + center crop
for evaluation, on images of any (and mixed) sizes."""

import math

import numpy as np
import pytest

from cnnrnn.data import image
from cnnrnn.data import pipeline

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


@pytest.mark.parametrize("shape", [(300, 400), (500, 333), (256, 256), (120, 90)])
def test_eval_resize_center_crop_matches_torchvision(shape):
  torchvision = pytest.importorskip("torchvision")
  from PIL import Image  # pylint: disable=g-import-not-at-top

  img = _images([shape])[0]
  ref = torchvision.transforms.Compose([
      torchvision.transforms.Resize(256), torchvision.transforms.CenterCrop(224)])(
          Image.fromarray(img))
  np.testing.assert_array_equal(image.resize_center_crop(img, 224), np.asarray(ref))


def test_random_resized_crop_boxes_stay_in_range():
  rng = np.random.default_rng(0)
  areas, aspects = [], []
  for _ in range(2000):
    h, w = rng.integers(50, 400, 2)
    top, left, ch, cw = image.random_resized_crop_box(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng)
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    areas.append(ch * cw / (h * w))
    aspects.append(cw / ch)
  # Rounding to whole pixels moves area and aspect slightly past the sampled ranges.
  assert 0.06 < min(areas) < 0.12 and max(areas) <= 1.0
  assert min(aspects) > 0.7 and max(aspects) < 1.4
  assert math.isclose(np.median(np.log(aspects)), 0.0, abs_tol=0.05)
  # An image too narrow for any sampled aspect ratio: the clamped central crop.
  top, left, ch, cw = image.random_resized_crop_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), rng)
  assert (top, left, ch, cw) == ((1000 - 13) // 2, 0, 13, 10)


def test_ragged_images_through_the_training_and_eval_pipelines():
  shapes = [(60, 80), (100, 50), (40, 40), (75, 120), (64, 64), (90, 70), (33, 99), (48, 52)]
  source = pipeline.InMemory.from_arrays({
      "image": pipeline.read_batch([{"image": im} for im in _images(shapes)], range(8))["image"],
      "label": np.arange(8, dtype=np.int64)})
  assert source.arrays["image"].dtype == object
  train_pre = image.ImagePreprocess(MEAN, STD, augment="random_resized_crop", image_size=32)
  eval_pre = image.ImagePreprocess(MEAN, STD, image_size=32)

  def first_batches(n):
    it = iter(pipeline.train_dataset(source, global_batch_size=4, seed=1, preprocess=train_pre))
    return [next(it) for _ in range(n)]

  a, b = first_batches(3), first_batches(3)
  for x, y in zip(a, b):  # Deterministic for the seed.
    np.testing.assert_array_equal(x["image"], y["image"])
  assert a[0]["image"].shape == (4, 32, 32, 3) and a[0]["image"].dtype == np.float32
  assert not np.array_equal(a[0]["image"], a[2]["image"])  # Epoch 2 reshuffles and re-crops.

  batches = list(pipeline.eval_batches(source, global_batch_size=3, preprocess=eval_pre))
  assert [b["image"].shape for b in batches] == [(3, 32, 32, 3)] * 3
  assert [int(b["mask"].sum()) for b in batches] == [3, 3, 2]
  expected = (image.resize_center_crop(source[1]["image"], 32).astype(np.float32)
              - np.float32(255) * np.asarray(MEAN, np.float32)) / (
                  np.float32(255) * np.asarray(STD, np.float32))
  np.testing.assert_allclose(batches[0]["image"][1], expected, rtol=1e-5, atol=1e-5)


def test_preprocess_errors_name_the_field():
  with pytest.raises(ValueError, match="random_resized_crop' needs dataset.image_size"):
    image.ImagePreprocess(MEAN, STD, augment="random_resized_crop")
  with pytest.raises(ValueError, match="dataset.augment='mixup'; allowed"):
    image.ImagePreprocess(MEAN, STD, augment="mixup")
  ragged = pipeline.read_batch([{"image": im} for im in _images([(5, 6), (6, 5)])], range(2))
  with pytest.raises(ValueError, match="different sizes need dataset.image_size"):
    image.ImagePreprocess(MEAN, STD)({"image": ragged["image"], "label": np.zeros(2)})
