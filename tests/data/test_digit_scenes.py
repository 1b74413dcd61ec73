"""digit_scenes: deterministic for a seed, from the right MNIST split, and every pixel's label
is the digit drawn there (checked against the MNIST images)."""

import numpy as np

from cnnrnn.data import sources
from cnnrnn.data.builders import digit_scenes as ds_
from cnnrnn.data.builders.mnist import read_idx
from tests.helpers import shared_dataset

OPTIONS = dict(num_train=30, num_test=20, size=48, num_digits=3)


def _examples(ds, split):
  source = ds.split(split)
  return [source[i] for i in range(len(source))]


def test_digit_scenes_labels_are_the_digits_drawn(tmp_path):
  root = shared_dataset("mnist")
  ds = sources.load("digit_scenes", str(tmp_path / "a"), root, options=OPTIONS)
  again = sources.load("digit_scenes", str(tmp_path / "b"), root, options=dict(OPTIONS, num_test=25))
  other = sources.load("digit_scenes", str(tmp_path / "c"), root, options=dict(OPTIONS, seed=1))
  assert (len(ds.split("train")), len(ds.split("test"))) == (30, 20) and ds.is_image
  for x, y in zip(_examples(ds, "test"), _examples(again, "test")):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])  # example i does not depend on the size
  assert any(not np.array_equal(x["image"], y["image"])
             for x, y in zip(_examples(ds, "train"), _examples(other, "train")))
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images = read_idx(f"{root}/{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(f"{root}/{prefix}-labels-idx1-ubyte.gz")
    for e in _examples(ds, split):
      image, seg = e["image"][..., 0], e["segmentation"]
      assert image.shape == seg.shape == (48, 48) and seg.max() <= 10
      np.testing.assert_array_equal(labels[e["digit_index"]], e["digits"])
      # Rebuild the canvas and the per-pixel winner from the MNIST digits themselves.
      canvas = np.zeros((48, 48), np.uint8)
      allowed = np.zeros((48, 48, 11), bool)  # labels a pixel may carry (ties)
      brightest = np.zeros((48, 48), np.int32)
      layers = []
      for index, (y, x) in zip(e["digit_index"], e["offsets"]):
        layer = np.zeros((48, 48), np.int32)
        layer[y:y + 28, x:x + 28] = images[index]
        layers.append((layer, labels[index] + 1))
        canvas = np.maximum(canvas, layer.astype(np.uint8))
        brightest = np.maximum(brightest, layer)
      np.testing.assert_array_equal(image, canvas)
      for layer, label in layers:
        allowed[..., label] |= (layer == brightest) & (layer >= ds_.THRESHOLD)
      foreground = brightest >= ds_.THRESHOLD
      np.testing.assert_array_equal(seg > 0, foreground)
      ys, xs = np.nonzero(foreground)
      assert allowed[ys, xs, seg[ys, xs]].all()
      assert foreground.any()
