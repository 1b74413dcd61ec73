import numpy as np
import pytest

from cnnrnn import data


class ArraySource:
  """A random-access source of n examples whose label is the example's index."""

  def __init__(self, n, shape=(4, 4, 1)):
    self.n, self.shape = n, shape

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full(self.shape, i % 256, np.uint8), "label": np.int64(i)}


def _identity(batch, rng=None):
  del rng
  return dict(batch)


@pytest.mark.parametrize("n,batch,processes", [(10, 4, 1), (1001, 64, 1), (103, 8, 2), (100, 12, 3)])
def test_eval_counts_every_example_exactly_once(n, batch, processes):
  seen, num_batches = [], set()
  for p in range(processes):
    batches = list(data.eval_batches(ArraySource(n), global_batch_size=batch, preprocess=_identity,
                                     process_index=p, process_count=processes))
    num_batches.add(len(batches))
    for b in batches:
      assert len(b["label"]) == batch // processes and b["mask"].shape == (batch // processes,)
      seen.extend(b["label"][b["mask"] == 1].tolist())
  assert len(num_batches) == 1  # Every process runs the same number of steps.
  assert sorted(seen) == list(range(n))


def _take(it, k):
  return [next(it)["label"].copy() for _ in range(k)]


def test_train_stream_is_deterministic_reshuffled_and_resumable():
  src = ArraySource(40)
  make = lambda seed: iter(data.train_dataset(src, global_batch_size=8, seed=seed, preprocess=_identity))
  a = _take(make(0), 10)
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(_take(make(0), 10)))
  assert not np.array_equal(np.concatenate(a), np.concatenate(_take(make(1), 10)))
  epoch1, epoch2 = np.concatenate(a[:5]), np.concatenate(a[5:])
  assert sorted(epoch1) == sorted(epoch2) == list(range(40))  # Each epoch is a permutation,
  assert not np.array_equal(epoch1, epoch2)  # and a different one.
  it = make(0)
  _take(it, 3)
  state = it.get_state()
  rest = _take(it, 4)
  resumed = make(0)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.concatenate(rest), np.concatenate(_take(resumed, 4)))


def test_each_process_reads_a_disjoint_shard():
  src = ArraySource(48)
  shards = []
  for p in range(3):
    it = iter(data.train_dataset(src, global_batch_size=12, seed=0, preprocess=_identity,
                                 process_index=p, process_count=3))
    shards.append(set(np.concatenate(_take(it, 4)).tolist()))  # One epoch of the shard.
  assert set.union(*shards) == set(range(48)) and sum(map(len, shards)) == 48


def test_image_preprocess_pads_normalises_and_augments():
  batch = {"image": np.full((2, 28, 28, 1), 255, np.uint8), "label": np.array([1, 2])}
  pre = data.ImagePreprocess(mean=(0.5,), std=(0.25,), pad_to=32)
  out = pre(batch)
  assert out["image"].shape == (2, 32, 32, 1) and out["image"].dtype == np.float32
  assert out["image"][0, 0, 0, 0] == pytest.approx(-2.0)  # Black padding: (0 - .5) / .25
  assert out["image"][0, 2, 2, 0] == pytest.approx(2.0)
  aug = data.ImagePreprocess(mean=(0.0,), std=(1 / 255,), augment="crop_flip", crop_padding=1)
  img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1) + 1
  out = aug({"image": img, "label": np.array([0, 0])}, np.random.default_rng(0))["image"]
  assert out.shape == img.shape and set(np.unique(out)) <= set(np.unique(img)) | {0}
  with pytest.raises(ValueError, match="augment"):
    data.ImagePreprocess(mean=(0.0,), std=(1.0,), augment="mixup")


def test_in_memory_copy_reads_the_same_batches():
  src = ArraySource(37)
  mem = data.pipeline.InMemory(src, chunk=10)
  idx = [36, 0, 5, 5, 17]
  for k, v in data.pipeline.read_batch(src, idx).items():
    np.testing.assert_array_equal(mem.read_batch(idx)[k], v)
  a = iter(data.train_dataset(src, global_batch_size=8, seed=3, preprocess=_identity))
  b = iter(data.train_dataset(mem, global_batch_size=8, seed=3, preprocess=_identity))
  np.testing.assert_array_equal(np.concatenate(_take(a, 9)), np.concatenate(_take(b, 9)))
