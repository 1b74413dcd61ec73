"""Forecasting the real series (airline, sunspots) with an LSTM and the time-series FCN, against
the seasonal-naive forecast and ARIMA (statsmodels), on the same test windows.

  python experiments/forecasting/run.py --root=workdirs/forecasting   # trains, then scores
  python -m cnnrnn.report --experiments=forecasting                   # the table

Each network run is `python -m cnnrnn.main --config=configs/forecasting.py:DATASET,MODEL`
(its final test metrics come from its workdir's metrics.jsonl); ARIMA is fitted on the
training part only (the same chronological split), then forecasts every test window from its
origin with the fitted parameters (`results.apply` to the series up to the origin). Writes
results.json beside this file.
"""

import json
import os
import sys
import time

from absl import app, flags
import numpy as np

from cnnrnn.analysis import experiment_runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ROOT = flags.DEFINE_string("root", "workdirs/forecasting", "Folder for the runs' workdirs.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps per network run.")

RUNS = [("airline", "lstm"), ("airline", "ts_fcn"), ("sunspots", "lstm"), ("sunspots", "ts_fcn")]
# (order, seasonal order, on logs, trend) fitted to each series; airline: Box & Jenkins'
# "airline model" on logs; sunspots: an AR(3) with a constant.
ARIMA = {"airline": ((0, 1, 1), (0, 1, 1, 12), True, "n"),
         "sunspots": ((3, 0, 0), (0, 0, 0, 0), False, "c")}


def train(dataset: str, model: str, workdir: str, data_dir: str) -> tuple[dict, float]:
  """Runs the config through the command line; returns its final test metrics, wall time."""
  return experiment_runs.train(f"configs/forecasting.py:{dataset},{model}", workdir,
                               f"--config.dataset.data_dir={data_dir}",
                               f"--config.num_train_steps={_STEPS.value}", cwd=ROOT)


def arima_scores(dataset: str, data_dir: str) -> tuple[dict, float]:
  """ARIMA forecasts of every test window, scored like the task (normalised units)."""
  from statsmodels.tsa.statespace.sarimax import SARIMAX  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, ROOT)
  from cnnrnn.data import builders, sources  # pylint: disable=g-import-not-at-top
  from cnnrnn.data.builders import time_series  # pylint: disable=g-import-not-at-top
  from configs import forecasting  # pylint: disable=g-import-not-at-top

  options = forecasting.get_config(f"{dataset},lstm").dataset.to_dict()
  test = sources.load(dataset, data_dir, options=options).split("test")
  examples = [test[i] for i in range(len(test))]
  cls = builders.BUILDERS[dataset]
  builder = cls(data_dir=data_dir, **cls.builder_kwargs(options))
  series, cfg = builder.series(), builder.builder_config
  _, train_end = time_series.split_bounds(len(series), cfg.val_fraction,
                                          cfg.test_fraction)["train"]
  order, seasonal, log, trend = ARIMA[dataset]
  transform, inverse = (np.log, np.exp) if log else (np.asarray, np.asarray)
  start = time.perf_counter()
  fitted = SARIMAX(transform(series[:train_end]), order=order, seasonal_order=seasonal,
                   trend=trend).fit(disp=False)
  sums = {"mse": 0.0, "mae": 0.0, "mase": 0.0, "last_mse": 0.0}
  for e in examples:
    t, h = int(e["time"]), e["targets"].shape[0]
    forecast = inverse(fitted.apply(transform(series[:t])).forecast(h))
    err = (forecast - series[t:t + h]) / e["std"][0]
    sums["mse"] += float(np.mean(err ** 2))
    sums["mae"] += float(np.mean(np.abs(err)))
    sums["mase"] += float(np.mean(np.abs(err) / e["mase_scale"][0]))
    sums["last_mse"] += float(err[-1] ** 2)
  means = {k: v / len(examples) for k, v in sums.items()}
  means["nrmse"] = means["mse"] ** 0.5
  return means, time.perf_counter() - start


def main(argv):
  del argv
  data_dir = os.path.join(_ROOT.value, "tfds")
  rows = []
  for dataset in ("airline", "sunspots"):
    naive = None
    for model in (m for d, m in RUNS if d == dataset):
      workdir = os.path.join(_ROOT.value, f"{dataset}_{model}")
      metrics, wall = train(dataset, model, workdir, data_dir)
      naive = metrics  # every run scores the same windows' seasonal-naive forecast
      rows.append(dict(id=f"{dataset}_{model}", setting=f"{dataset}, {model}",
                       config=f"configs/forecasting.py:{dataset},{model}", metric="test MASE",
                       unit="", fmt=".3f", paper=None, ours=round(metrics["mase"], 4),
                       note=f"NRMSE {metrics['nrmse']:.3f}; {_STEPS.value} steps, {wall:.0f} s"))
    rows.append(dict(id=f"{dataset}_naive", setting=f"{dataset}, seasonal naive",
                     config=f"configs/forecasting.py:{dataset},lstm", metric="test MASE",
                     unit="", fmt=".3f", paper=None, ours=round(naive["naive_mase"], 4),
                     note=f"NRMSE {naive['naive_nrmse']:.3f}; the task's naive_* metrics"))
    scores, wall = arima_scores(dataset, data_dir)
    order, seasonal, log, _ = ARIMA[dataset]
    rows.append(dict(id=f"{dataset}_arima", setting=f"{dataset}, ARIMA{order}"
                     + (f"x{seasonal[:3]}_{seasonal[3]} on logs" if log else ""),
                     config="experiments/forecasting/run.py",
                     metric="test MASE", unit="", fmt=".3f", paper=None,
                     ours=round(scores["mase"], 4),
                     note=f"NRMSE {scores['nrmse']:.3f}; fit + forecasts {wall:.1f} s"))
  results = {
      "title": "Forecasting real series: networks vs seasonal naive vs ARIMA",
      "source": "experiments/forecasting/run.py (this file's runs; workdirs not in the repository)",
      "paper": "the course: \"RNNs/LSTMs excel at ... time series prediction\"",
      "claim": "an LSTM forecasts real series well",
      "hardware": f"{experiment_runs.cpu_description()}, 2 cores shared with other jobs",
      "wall_time": "about 1 minute per network run",
      "rows": rows,
      "summary": {"rows": ["airline_lstm", "airline_naive", "airline_arima"],
                  "note": "test MASE, airline passengers 1958-60, horizon 12",
                  "numeric_paper": False},
  }
  experiment_runs.write_results(os.path.dirname(os.path.abspath(__file__)), results)
  print(json.dumps(rows, indent=1))


if __name__ == "__main__":
  app.run(main)
