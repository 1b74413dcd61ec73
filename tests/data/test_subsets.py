"""Class subsets: which examples are kept, their new labels, N per class, and the streams."""

import numpy as np
import pytest

from cnnrnn import data
from cnnrnn.data import subsets
from cnnrnn.data.pipeline import InMemory
from cnnrnn.train import default_config


def _source():
  labels = np.repeat(np.arange(4), 5)  # 5 examples of each of 4 classes
  return InMemory.from_arrays({"image": np.arange(20).reshape(20, 1), "label": labels})


def test_classes_are_kept_in_order_and_relabelled():
  subset = subsets.class_subset(_source(), (3, 1))
  assert len(subset) == 10
  np.testing.assert_array_equal(subset.arrays["image"][:, 0], [5, 6, 7, 8, 9, 15, 16, 17, 18, 19])
  np.testing.assert_array_equal(subset.arrays["label"], [1] * 5 + [0] * 5)  # 3 -> 0, 1 -> 1


def test_examples_per_class_is_a_seeded_choice():
  a = subsets.class_subset(_source(), (0, 2), examples_per_class=2, seed=0)
  b = subsets.class_subset(_source(), (0, 2), examples_per_class=2, seed=0)
  c = [subsets.class_subset(_source(), (0, 2), 2, seed=s).arrays["image"][:, 0].tolist()
       for s in range(1, 6)]
  np.testing.assert_array_equal(a.arrays["image"], b.arrays["image"])
  assert np.bincount(a.arrays["label"]).tolist() == [2, 2]
  assert any(images != a.arrays["image"][:, 0].tolist() for images in c)


@pytest.mark.parametrize("classes,n,match", [
    ((1, 1), 0, r"dataset.classes=\(1, 1\); allowed: distinct labels"),
    ((7,), 0, r"class 7 has no examples"),
    ((0,), 6, r"dataset.examples_per_class=6: class 0 has only 5 examples"),
])
def test_bad_subsets(classes, n, match):
  with pytest.raises(ValueError, match=match):
    subsets.class_subset(_source(), classes, n)


def test_streams_of_a_subset(data_dir):
  c = default_config().dataset
  c.name, c.data_dir = "digits", data_dir
  c.classes, c.examples_per_class = (9, 4, 7), 10
  dataset = data.load(c.name, c.data_dir)
  streams = data.make_streams(c, dataset, batch_size=10, eval_batch_size=50, seed=0)
  assert streams.model_defaults == {"num_classes": 3} and streams.steps_per_epoch == 3
  labels = np.concatenate([next(iter(streams.train))["label"] for _ in range(1)])
  assert set(labels.tolist()) <= {0, 1, 2}
  test = [b for b in streams.eval_batches("test")]
  test_labels = np.concatenate([b["label"][b["mask"] > 0] for b in test])
  full = dataset.open_split("test", False)
  want = sum(int(full[i]["label"]) in (9, 4, 7) for i in range(len(full)))
  assert len(test_labels) == want and set(test_labels.tolist()) == {0, 1, 2}
