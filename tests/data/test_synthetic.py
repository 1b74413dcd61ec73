"""Synthetic tasks: determinism for a seed, valid labels, and the theoretical baselines."""

import numpy as np
import pytest

from cnnrnn.data import synthetic


def _same(a, b):
  assert a.keys() == b.keys()
  return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make", [
    lambda seed: synthetic.adding_problem(64, 50, seed=seed),
    lambda seed: synthetic.copy_task(64, 20, seed=seed),
    lambda seed: synthetic.temporal_order(64, 100, seed=seed),
    lambda seed: synthetic.temporal_order(64, 100, num_relevant=3, seed=seed),
])
def test_deterministic_for_a_seed(make):
  assert _same(make(0), make(0))
  assert not _same(make(0), make(1))


def test_adding_problem_structure_and_baseline():
  n, t = 20000, 60
  data = synthetic.adding_problem(n, t, seed=0)
  x, y = data["inputs"], data["targets"]
  assert x.shape == (n, t, 2) and y.shape == (n, 1)
  assert x.dtype == y.dtype == np.float32
  markers = x[..., 1]
  assert np.all(markers.sum(axis=1) == 2)
  assert np.all(markers[:, : t // 2].sum(axis=1) == 1)  # One marker in each half.
  np.testing.assert_allclose(y[:, 0], (x[..., 0] * markers).sum(axis=1), rtol=1e-6)
  assert 0 <= x[..., 0].min() and x[..., 0].max() <= 1
  mse_of_constant_one = float(np.mean((y - 1.0) ** 2))
  assert abs(mse_of_constant_one - 1 / 6) < 0.005  # Var(u1 + u2) = 2/12.


def test_copy_task_layout():
  n, delay, length, k = 50, 15, 6, 8
  data = synthetic.copy_task(n, delay, copy_length=length, num_symbols=k, seed=0)
  x, y = data["inputs"], data["targets"]
  total = delay + 2 * length
  assert x.shape == y.shape == (n, total) and x.dtype == y.dtype == np.int32
  np.testing.assert_array_equal(y[:, -length:], x[:, :length])
  assert np.all(y[:, :-length] == 0)
  assert np.all((x[:, :length] >= 1) & (x[:, :length] <= k))
  assert np.all(x[:, length + delay - 1] == k + 1)  # The delimiter.
  assert np.all(np.delete(x[:, length:], delay - 1, axis=1) == 0)  # Blanks elsewhere.


@pytest.mark.parametrize("num_relevant", [2, 3])
def test_temporal_order_labels(num_relevant):
  n, t = 400, 100
  data = synthetic.temporal_order(n, t, num_relevant=num_relevant, seed=0)
  x, y, lengths = data["inputs"], data["targets"], data["seq_lengths"]
  assert x.shape == (n, t + t // 10) and y.shape == lengths.shape == (n,)
  assert np.all((lengths >= t) & (lengths <= t + t // 10))
  assert set(np.unique(y)) == set(range(2 ** num_relevant))  # Every class occurs.
  symbols = synthetic.TEMPORAL_ORDER_SYMBOLS
  for row, label, length in zip(x, y, lengths):
    seq = "".join(symbols[i] for i in row[:length])
    assert seq[0] == "B" and seq[-1] == "E" and "B" not in seq[1:] and "E" not in seq[:-1]
    relevant = [c for c in seq if c in "XY"]
    assert len(relevant) == num_relevant
    assert int("".join("1" if c == "Y" else "0" for c in relevant), 2) == label
    assert 10 <= seq.index(relevant[0]) <= 20  # The paper's first window (length 100).


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="seq_len"):
    synthetic.adding_problem(10, 1, seed=0)
  with pytest.raises(ValueError, match="num_relevant"):
    synthetic.temporal_order(10, 100, num_relevant=4, seed=0)
  with pytest.raises(ValueError, match="delay"):
    synthetic.copy_task(10, 0, seed=0)
