"""Forecasting datasets that need no download: Mackey-Glass (generated), and real series that
ship inside PyPI packages (yearly sunspots from statsmodels, the airline passengers from
sktime).

Every dataset is cut into windows the same way (`windows`):

- The series x [N, F] is split chronologically: the first `1 - val_fraction - test_fraction`
  of the time steps are `train`, the next `val_fraction` `validation`, the last
  `test_fraction` `test`. Nothing is shuffled across time; a window belongs to the split
  holding its first target step, and all of its targets lie in that split (its context may
  reach back into the earlier split, as in any rolling-origin evaluation).
- Each feature is normalised with the mean and standard deviation of the training part only
  (`mean`, `std` in every example map predictions back to the original units).
- An example is `inputs` [context_len, F] (the last `context_len` steps), `targets`
  [horizon, F] (the next `horizon` steps), `naive` [horizon, F] (the seasonal-naive forecast
  from the context: the value one season before, repeated), `mase_scale` [F] (the in-sample
  mean absolute seasonal difference of the training part, in normalised units: the MASE
  denominator of Hyndman & Koehler 2006), `time` (index of the first target step) and
  `mean`, `std` [F].

Sizes are builder-config fields set from `config.dataset` (`context_len`, `horizon`,
`stride`, `val_fraction`, `test_fraction`; Mackey-Glass also `num_points`, `seed`,
`sample_every`); each setting is prepared once into its own folder, named after it.

Mackey-Glass (Mackey & Glass 1977) with the constants of Gers, Eck & Schmidhuber 2001:
dx/dt = 0.2 x(t - 17) / (1 + x(t - 17)^10) - 0.1 x(t), integrated with 4th-order
Runge-Kutta at step 0.1 (the delayed value at half steps is the mean of its two grid
neighbours), the constant initial history 1.2 + 0.1 u (u uniform in [-1, 1] from
`dataset.seed`; seed 0 gives exactly 1.2), the first 1,000 time units discarded as
transient, then sampled every `sample_every` time units.
"""

import dataclasses
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import base
from cnnrnn.data.options import Option

MG_TAU, MG_A, MG_B, MG_POWER = 17.0, 0.2, 0.1, 10
MG_DT = 0.1
MG_TRANSIENT = 1000.0


def mackey_glass(num_points: int, *, seed: int = 0, sample_every: float = 1.0,
                 tau: float = MG_TAU, dt: float = MG_DT, transient: float = MG_TRANSIENT
                 ) -> np.ndarray:
  """The Mackey-Glass series (module docstring): [num_points] float64.

  Args:
    num_points: samples returned (after the transient).
    seed: 0 starts from the constant history 1.2; others from 1.2 + 0.1 u.
    sample_every: time units between samples (a multiple of dt).
    tau: the delay (17: mildly chaotic).
    dt: the Runge-Kutta step.
    transient: time units integrated and discarded first.

  Raises:
    ValueError: tau or sample_every not a multiple of dt.
  """
  delay = round(tau / dt)
  every = round(sample_every / dt)
  if abs(delay * dt - tau) > 1e-9 or every < 1 or abs(every * dt - sample_every) > 1e-9:
    raise ValueError(f"tau={tau} and sample_every={sample_every} must be multiples of dt={dt}")
  x0 = 1.2 if seed == 0 else 1.2 + 0.1 * np.random.default_rng(seed).uniform(-1, 1)
  skip = round(transient / dt)
  steps = skip + (num_points - 1) * every
  x = np.empty(steps + 1 + delay)
  x[:delay + 1] = x0  # x[i] is x(t = (i - delay) dt); the history is constant.

  def f(xt, xd):
    return MG_A * xd / (1.0 + xd ** MG_POWER) - MG_B * xt

  for i in range(delay, delay + steps):
    xd0, xd1 = x[i - delay], x[i - delay + 1]
    xdh = 0.5 * (xd0 + xd1)
    xt = x[i]
    k1 = f(xt, xd0)
    k2 = f(xt + 0.5 * dt * k1, xdh)
    k3 = f(xt + 0.5 * dt * k2, xdh)
    k4 = f(xt + dt * k3, xd1)
    x[i + 1] = xt + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
  return x[delay + skip::every][:num_points]


def split_bounds(n: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
  """Chronological [start, end) of each split of a series of n steps."""
  n_test = int(round(n * test_fraction))
  n_val = int(round(n * val_fraction))
  n_train = n - n_val - n_test
  return {"train": (0, n_train), "validation": (n_train, n_train + n_val),
          "test": (n_train + n_val, n)}


def seasonal_naive(context: np.ndarray, horizon: int, season: int) -> np.ndarray:
  """The seasonal-naive forecast from a context [C, F]: step h repeats the value m*ceil((h+1)/m)
  steps before it (m = season; m = 1 is the naive forecast). Returns [horizon, F]."""
  h = np.arange(horizon)
  back = season * ((h // season) + 1)  # >= h + 1, the last observed step of that phase
  return context[len(context) - back + h]


def windows(series: np.ndarray, *, context_len: int, horizon: int, season: int, stride: int,
            val_fraction: float, test_fraction: float) -> dict[str, list[dict]]:
  """Cuts `series` [N] or [N, F] into normalised forecasting windows (module docstring).

  Train windows start every `stride` steps; validation and test windows every step.

  Raises:
    ValueError: a split too short for one window, or a context shorter than the season.
  """
  x = np.asarray(series, np.float64)
  x = x[:, None] if x.ndim == 1 else x
  if context_len < season:
    raise ValueError(f"dataset.context_len={context_len} is shorter than the season ({season}); "
                     f"the seasonal-naive forecast needs at least one season of context")
  bounds = split_bounds(len(x), val_fraction, test_fraction)
  lo, hi = bounds["train"]
  train = x[lo:hi]
  mean, std = train.mean(axis=0), train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  z = (x - mean) / std
  scale = np.abs(z[season:hi] - z[:hi - season]).mean(axis=0)
  out = {}
  for split, (start, end) in bounds.items():
    first = max(start, context_len)  # first target step of the first window
    step = stride if split == "train" else 1
    out[split] = []
    for t in range(first, end - horizon + 1, step):
      context = z[t - context_len:t]
      out[split].append({
          "inputs": context.astype(np.float32),
          "targets": z[t:t + horizon].astype(np.float32),
          "naive": seasonal_naive(context, horizon, season).astype(np.float32),
          "mase_scale": scale.astype(np.float32),
          "mean": mean.astype(np.float32), "std": std.astype(np.float32),
          "time": np.int64(t),
      })
    if not out[split] and (split != "validation" or end > start):
      raise ValueError(
          f"the {split} part ({end - start} steps) holds no window of context_len="
          f"{context_len} + horizon={horizon}; use shorter windows or a larger {split} part")
  return out


@dataclasses.dataclass
class ForecastConfig(tfds.core.BuilderConfig):
  """Attributes: context_len (C), horizon (H), stride (between training windows),
  val_fraction, test_fraction (chronological shares of the series), num_points, seed and
  sample_every (generated series only)."""

  context_len: int = 24
  horizon: int = 1
  stride: int = 1
  val_fraction: float = 0.1
  test_fraction: float = 0.2
  num_points: int = 0
  seed: int = 0
  sample_every: float = 1.0


_FIELD_TYPES = {"context_len": int, "horizon": int, "stride": int, "val_fraction": float,
                "test_fraction": float, "num_points": int, "seed": int, "sample_every": float}


class ForecastingBuilder(base.RawFilesBuilder, skip_registration=True):
  """A series cut into forecasting windows (module docstring). Subclasses set `SEASON`,
  `DEFAULTS` (their builder-config defaults) and `series()`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Chronological windows, normalised on the training part."}
  SEASON: int = 1
  DEFAULTS: dict = {}
  HOMEPAGE: str = ""
  BUILDER_CONFIGS = [ForecastConfig(name="default")]

  @classmethod
  def config_options(cls) -> dict[str, Option]:
    """The `config.dataset` fields `builder_kwargs` reads (the builder config's attributes)."""
    minimum = {"context_len": 1, "horizon": 1, "stride": 1, "num_points": 2, "seed": 0,
               "val_fraction": 0, "test_fraction": 0, "sample_every": 0}
    return {k: Option(t, minimum=minimum[k]) for k, t in _FIELD_TYPES.items()}

  @classmethod
  def builder_kwargs(cls, options: dict) -> dict:
    """The builder config of the `config.dataset` fields named like its attributes."""
    defaults = {f.name: f.default for f in dataclasses.fields(ForecastConfig)
                if f.name in _FIELD_TYPES} | cls.DEFAULTS
    values = {k: _FIELD_TYPES[k](options[k]) if options.get(k) is not None else v
              for k, v in defaults.items()}
    for k in ("context_len", "horizon", "stride"):
      if values[k] < 1:
        raise ValueError(f"dataset.{k}={values[k]}; allowed: an integer >= 1")
    for k in ("val_fraction", "test_fraction"):
      if not 0 <= values[k] < 1:
        raise ValueError(f"dataset.{k}={values[k]}; allowed: a fraction in [0, 1)")
    if values["val_fraction"] + values["test_fraction"] >= 1:
      raise ValueError(f"dataset.val_fraction + dataset.test_fraction = "
                       f"{values['val_fraction'] + values['test_fraction']}; must leave a "
                       f"training part (< 1)")
    name = "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
                    for k, v in values.items())
    return {"config": ForecastConfig(name=name.replace(".", "p"), version=cls.VERSION,
                                     **values)}

  def series(self) -> np.ndarray:
    """The whole series, [N] or [N, F]."""
    raise NotImplementedError

  def _info(self):
    c = self.builder_config
    f = self.num_features()
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(c.context_len, f), dtype=np.float32),
            "targets": tfds.features.Tensor(shape=(c.horizon, f), dtype=np.float32),
            "naive": tfds.features.Tensor(shape=(c.horizon, f), dtype=np.float32),
            "mase_scale": tfds.features.Tensor(shape=(f,), dtype=np.float32),
            "mean": tfds.features.Tensor(shape=(f,), dtype=np.float32),
            "std": tfds.features.Tensor(shape=(f,), dtype=np.float32),
            "time": tfds.features.Tensor(shape=(), dtype=np.int64),
        }),
        disable_shuffling=True,  # record i is window i, in time order
        homepage=self.HOMEPAGE,
    )

  def num_features(self) -> int:
    return 1

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, or shipped inside a package.
    c = self.builder_config
    parts = windows(self.series(), context_len=c.context_len, horizon=c.horizon,
                    season=self.SEASON, stride=c.stride, val_fraction=c.val_fraction,
                    test_fraction=c.test_fraction)
    return {split: self._generate_examples(examples) for split, examples in parts.items()
            if examples}

  def _generate_examples(self, examples):
    for i, e in enumerate(examples):
      yield i, e


class MackeyGlass(ForecastingBuilder, skip_registration=True):
  """Mackey-Glass, tau = 17 (module docstring). Default: 4,000 samples one time unit apart,
  70 / 10 / 20 % chronological splits."""

  name = "mackey_glass"
  SEASON = 1
  DEFAULTS = {"num_points": 4000}
  HOMEPAGE = "https://doi.org/10.1126/science.267326"

  def series(self) -> np.ndarray:
    c = self.builder_config
    if c.num_points < 2:
      raise ValueError(f"dataset.num_points={c.num_points}; allowed: an integer >= 2")
    return mackey_glass(c.num_points, seed=c.seed, sample_every=c.sample_every)


def package_file(package: str, *parts: str, extra: str = "timeseries") -> str:
  """Path of a data file shipped inside an installed package, without importing it.

  Raises:
    FileNotFoundError: the package (or the file) is missing; says how to install it.
  """
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"this dataset ships inside the {package!r} package, which is not "
                            f"installed: pip install 'cnnrnn[{extra}]' (or pip install {package})")
  path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing from the installed {package!r} package")
  return path


class Sunspots(ForecastingBuilder, skip_registration=True):
  """Yearly mean sunspot numbers 1700-2008 (309 values; statsmodels' `sunspots` dataset, the
  series of Box & Jenkins, extended). Season 11 (the solar cycle) for the seasonal-naive
  baseline."""

  name = "sunspots"
  SEASON = 11
  DEFAULTS = {"context_len": 22}
  HOMEPAGE = "https://www.statsmodels.org/stable/datasets/generated/sunspots.html"

  def series(self) -> np.ndarray:
    path = package_file("statsmodels", "datasets", "sunspots", "sunspots.csv")
    data = np.genfromtxt(path, delimiter=",", skip_header=1)
    return data[:, 1]


class Airline(ForecastingBuilder, skip_registration=True):
  """Monthly international airline passengers 1949-1960 (144 values, Box & Jenkins' series G;
  the copy bundled with sktime). Season 12."""

  name = "airline"
  SEASON = 12
  DEFAULTS = {"context_len": 24, "test_fraction": 0.25, "val_fraction": 0.0}
  HOMEPAGE = "https://www.sktime.net/en/stable/api_reference/auto_generated/sktime.datasets.load_airline.html"

  def series(self) -> np.ndarray:
    path = package_file("sktime", "datasets", "data", "Airline", "Airline.csv")
    with open(path, encoding="utf-8") as f:
      rows = [line.strip().split(",") for line in f.read().splitlines()[1:] if line.strip()]
    return np.array([float(r[1]) for r in rows])

