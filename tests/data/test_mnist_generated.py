"""moving_mnist and mnist_captions: deterministic for a seed, built from the right MNIST split,
and labelled right (checked on the rendered pixels)."""

import numpy as np
import pytest

from cnnrnn.data import sources
from cnnrnn.data.builders import mnist_generated as g
from cnnrnn.data.builders.mnist import read_idx
from tests.helpers import shared_dataset

VIDEO = dict(num_train=40, num_test=20, num_frames=5, size=40, num_digits=2, min_frames=2)
CAPTIONS = dict(num_train=40, num_test=20)


@pytest.fixture(scope="module")
def mnist():
  root = shared_dataset("mnist")
  return {split: (read_idx(f"{root}/{prefix}-images-idx3-ubyte.gz"),
                  read_idx(f"{root}/{prefix}-labels-idx1-ubyte.gz"))
          for split, prefix in (("train", "train"), ("test", "t10k"))}


def _load(name, tmp_path, **options):
  return sources.load(name, str(tmp_path), shared_dataset("mnist"), options=options)


def _examples(ds, split):
  source = ds.split(split)
  return [source[i] for i in range(len(source))]


def _centroid(image):
  """Pixel-mass centroid (y, x) of a [H, W] image."""
  ys, xs = np.indices(image.shape)
  mass = image.astype(np.float64)
  return np.array([(ys * mass).sum(), (xs * mass).sum()]) / mass.sum()


def test_moving_mnist_is_deterministic_and_sized_by_the_config(tmp_path):
  a = _load("moving_mnist", tmp_path / "a", **VIDEO)
  b = _load("moving_mnist", tmp_path / "b", **VIDEO, seed=0)
  c = _load("moving_mnist", tmp_path / "c", **VIDEO, seed=1)
  more = _load("moving_mnist", tmp_path / "d", **dict(VIDEO, num_train=60))
  assert len(a.split("train")) == 40 and len(a.split("test")) == 20 and a.num_classes == 10
  for split in ("train", "test"):
    for x, y, z in zip(_examples(a, split), _examples(b, split), _examples(more, split)):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k])
        np.testing.assert_array_equal(x[k], z[k])  # example i does not depend on the size
  assert any(not np.array_equal(x["image"], y["image"])
             for x, y in zip(_examples(a, "train"), _examples(c, "train")))
  assert a.split("train")[0]["image"].shape == (5, 40, 40, 1)
  assert _load("moving_mnist", tmp_path / "a", **VIDEO, label_key="direction").num_classes == 4


def test_moving_mnist_labels_match_the_rendered_frames(tmp_path, mnist):
  ds = _load("moving_mnist", tmp_path, **dict(VIDEO, num_digits=1))
  for split in ("train", "test"):
    images, labels = mnist[split]
    for e in _examples(ds, split):
      frames, (index,) = e["image"][..., 0], e["digit_index"]
      assert e["label"] == labels[index] == e["digits"][0]
      length = int(e["seq_lengths"])
      assert 2 <= length <= 5 and not frames[length:].any()
      for t in range(length):  # the MNIST digit of that split is drawn where it says
        y, x = e["positions"][t, 0]
        np.testing.assert_array_equal(frames[t, y:y + 28, x:x + 28], images[index])
      # The pixel centroid moves in the labelled direction between frames 0 and 1.
      dy, dx = _centroid(frames[1]) - _centroid(frames[0])
      down, right = g.DIRECTIONS[e["direction"]].split("-")
      assert (dy > 0) == (down == "down") and (dx > 0) == (right == "right"), (dy, dx)
      assert abs(dy) == pytest.approx(3) and abs(dx) == pytest.approx(3)


def test_mnist_captions_are_deterministic(tmp_path):
  a = _load("mnist_captions", tmp_path / "a", **CAPTIONS)
  b = _load("mnist_captions", tmp_path / "b", **CAPTIONS)
  for x, y in zip(_examples(a, "test"), _examples(b, "test")):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert a.num_classes is None and a.split("train")[0]["image"].shape == (60, 60, 1)


def test_caption_relation_matches_where_the_digits_are(tmp_path, mnist):
  ds = _load("mnist_captions", tmp_path, **CAPTIONS)
  seen = set()
  for split in ("train", "test"):
    images, labels = mnist[split]
    for e in _examples(ds, split):
      canvas = e["image"][..., 0]
      words = g.decode_caption(e["caption"]).split()
      subject, obj = int(words[2]), int(words[-2])
      assert [subject, obj] == list(labels[e["digit_index"]]) == list(e["digits"])
      # Each digit's pixels are its split's MNIST image at its offset, and the caption's
      # relation is where the two digits' pixel centroids lie.
      centroids = []
      for index, (y, x) in zip(e["digit_index"], e["offsets"]):
        digit = images[index]
        assert np.all(canvas[y:y + 28, x:x + 28] >= digit)
        centroids.append(_centroid(digit) + (y, x))
      (sy, sx), (oy, ox) = centroids
      relation = " ".join(words[4:7])
      expected = {"on the left": sx < ox, "on the right": sx > ox,
                  "at the top": sy < oy, "at the bottom": sy > oy}
      assert expected[relation], (relation, centroids)
      assert len(words) == 12 and words[:2] == ["the", "digit"]
      assert words[7:10] == ["of", "the", "digit"]
      seen.add(relation)
  assert seen == {"on the left", "on the right", "at the top", "at the bottom"}
  assert len(g.WORDS) == 22


def test_too_small_canvases_are_refused(tmp_path):
  with pytest.raises(ValueError, match="dataset.size=50 cannot hold two digits"):
    _load("mnist_captions", tmp_path, size=50)
  with pytest.raises(ValueError, match="dataset.size=30 is too small"):
    _load("moving_mnist", tmp_path, size=30)
