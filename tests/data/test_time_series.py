"""Forecasting windows, Mackey-Glass, the bundled real series and the UCR datasets."""

import numpy as np
import pytest

from cnnrnn.data import sources
from cnnrnn.data.builders import time_series as ts
from cnnrnn.data.builders import ucr


def test_mackey_glass_is_the_tau_17_attractor_and_follows_the_seed():
  x = ts.mackey_glass(3000)
  # The tau = 17 attractor stays in about [0.4, 1.35] with standard deviation ~0.23.
  assert 0.35 < x.min() < 0.5 and 1.25 < x.max() < 1.4 and 0.2 < x.std() < 0.26
  np.testing.assert_array_equal(x, ts.mackey_glass(3000, seed=0))
  assert not np.allclose(x, ts.mackey_glass(3000, seed=1))
  # Sampling every 2 time units takes every other sample of the same trajectory.
  np.testing.assert_allclose(ts.mackey_glass(100, sample_every=2.0), x[:200:2])
  # The delay equation holds: dx/dt from central differences matches the right-hand side.
  fine = ts.mackey_glass(2000, sample_every=0.1)
  dxdt = (fine[172:-1] - fine[170:-3]) / 0.2
  rhs = 0.2 * fine[1:-172] / (1 + fine[1:-172] ** 10) - 0.1 * fine[171:-2]
  np.testing.assert_allclose(dxdt, rhs, atol=2e-3)


def test_windows_are_chronological_normalised_on_train_and_seasonal_naive_is_right():
  n, season = 120, 12
  t = np.arange(n, dtype=np.float64)
  series = 100 + t + 10 * np.sin(2 * np.pi * t / season)
  out = ts.windows(series, context_len=24, horizon=5, season=season, stride=2,
                   val_fraction=0.1, test_fraction=0.2)
  bounds = ts.split_bounds(n, 0.1, 0.2)
  assert bounds == {"train": (0, 84), "validation": (84, 96), "test": (96, 120)}
  train = series[:84]
  for split, examples in out.items():
    start, end = bounds[split]
    times = [int(e["time"]) for e in examples]
    step = 2 if split == "train" else 1
    assert times[0] == max(start, 24) and end - 5 - step < times[-1] <= end - 5
    assert set(np.diff(times)) == {step}
    for e in examples[:3] + examples[-3:]:
      std = e["std"][0]
      assert e["mean"][0] == pytest.approx(train.mean()) and std == pytest.approx(train.std())
      ti = int(e["time"])
      np.testing.assert_allclose(e["inputs"][:, 0] * std + e["mean"][0], series[ti - 24:ti],
                                 rtol=1e-5)
      np.testing.assert_allclose(e["targets"][:, 0] * std + e["mean"][0], series[ti:ti + 5],
                                 rtol=1e-5)
      # Seasonal naive: the value one season before each target step.
      np.testing.assert_allclose(e["naive"][:, 0] * std + e["mean"][0],
                                 series[ti - 12:ti - 7], rtol=1e-5)
      scale = np.abs(train[12:] - train[:-12]).mean() / train.std()
      assert e["mase_scale"][0] == pytest.approx(scale, rel=1e-5)


def test_seasonal_naive_repeats_the_last_season_beyond_one_season():
  context = np.arange(10.0)[:, None]
  np.testing.assert_array_equal(ts.seasonal_naive(context, 7, 3)[:, 0],
                                [7, 8, 9, 7, 8, 9, 7])
  np.testing.assert_array_equal(ts.seasonal_naive(context, 3, 1)[:, 0], [9, 9, 9])


def test_windows_refuse_too_short_parts_and_contexts():
  with pytest.raises(ValueError, match="shorter than the season"):
    ts.windows(np.arange(100.0), context_len=6, horizon=1, season=12, stride=1,
               val_fraction=0.1, test_fraction=0.2)
  with pytest.raises(ValueError, match="test part"):
    ts.windows(np.arange(100.0), context_len=10, horizon=30, season=1, stride=1,
               val_fraction=0.0, test_fraction=0.2)


def test_forecasting_builders_prepare_from_options(tmp_path):
  mg = sources.load("mackey_glass", str(tmp_path),
                    options={"context_len": 8, "horizon": 3, "num_points": 500})
  assert {s: len(v) for s, v in mg.splits.items()} == {"train": 340, "validation": 48,
                                                       "test": 98}
  e = mg.split("test")[0]
  assert e["inputs"].shape == (8, 1) and e["targets"].shape == (3, 1) and not mg.is_image
  raw = ts.mackey_glass(500)
  np.testing.assert_allclose(e["targets"][:, 0] * e["std"][0] + e["mean"][0],
                             raw[int(e["time"]):int(e["time"]) + 3], rtol=1e-5)
  airline = sources.load("airline", str(tmp_path))
  assert len(airline.split("train")) + 24 == 108 and len(airline.split("test")) == 36
  first = airline.split("train")[0]
  assert first["inputs"][0, 0] * first["std"][0] + first["mean"][0] == pytest.approx(112)
  sunspots = sources.load("sunspots", str(tmp_path))
  assert len(sunspots.split("train")) == 216 - 22
  with pytest.raises(ValueError, match="dataset.horizon=0"):
    sources.load("airline", str(tmp_path), options={"horizon": 0})
  with pytest.raises(ValueError, match="val_fraction"):
    sources.load("airline", str(tmp_path), options={"val_fraction": 0.5, "test_fraction": 0.5})


@pytest.mark.parametrize("name,sizes,length,classes", [
    ("ucr_gunpoint", (50, 150), 150, 2),
    ("ucr_italy_power_demand", (67, 1029), 24, 2),
    ("ucr_arrowhead", (36, 175), 251, 3),
])
def test_ucr_datasets_have_the_archive_sizes(tmp_path, name, sizes, length, classes):
  ds = sources.load(name, str(tmp_path))
  assert (len(ds.split("train")), len(ds.split("test"))) == sizes and ds.num_classes == classes
  e = ds.split("train")[0]
  assert e["series"].shape == (length, 1) and e["series"].dtype == np.float32
  labels = [ds.split("test")[i]["label"] for i in range(len(ds.split("test")))]
  assert sorted(set(labels)) == list(range(classes))
  # The archive's series are z-normalised one by one.
  assert abs(float(e["series"].mean())) < 1e-3 and float(e["series"].std(ddof=1)) == pytest.approx(
      1.0, abs=0.02)


def test_read_ts_maps_the_file(tmp_path):
  path = tmp_path / "X_TRAIN.ts"
  path.write_text("#comment\n@problemName X\n@univariate true\n@classLabel true b a\n@data\n"
                  "1,2,3:a\n4,5,6:b\n")
  values, labels, names = ucr.read_ts(str(path))
  np.testing.assert_array_equal(values, [[1, 2, 3], [4, 5, 6]])
  assert labels == ["a", "b"] and names == ["b", "a"]
  path.write_text("@univariate false\n@data\n1,2:3,4:a\n")
  with pytest.raises(ValueError, match="multivariate"):
    ucr.read_ts(str(path))
