"""Plots the trained networks' forecasts against the truth on the test part of each series.

  python experiments/forecasting/plot_forecasts.py --root=workdirs/forecasting

Reads the workdirs `experiments/forecasting/run.py` wrote (`DATASET_MODEL`), forecasts
every `HORIZON`-th test window (so the windows tile the test part) and writes
`forecasts_DATASET.png` beside this file, with the seasonal-naive forecast of the same windows.
"""

import os

from absl import app, flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnnrnn.data import sources  # noqa: E402
from cnnrnn.train.runs import load_run  # noqa: E402

_ROOT = flags.DEFINE_string("root", "workdirs/forecasting", "The runs' workdirs.")
MODELS = ("lstm", "ts_fcn")
HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv):
  del argv
  for dataset in ("airline", "sunspots"):
    fig, ax = plt.subplots(figsize=(9, 3.5))
    truth_drawn = False
    for model in MODELS:
      run = load_run(os.path.join(_ROOT.value, f"{dataset}_{model}"), task="forecasting")
      c = run.config
      test = sources.load(dataset, c.dataset.data_dir, options=c.dataset.to_dict()).split("test")
      horizon = c.dataset.horizon
      windows = [test[i] for i in range(0, len(test), horizon)]
      context = np.stack([w["inputs"] for w in windows])
      forecast = np.asarray(run.model.apply(run.variables, context, train=False))
      for k, w in enumerate(windows):
        t = int(w["time"]) + np.arange(horizon)
        scale = lambda v: v * w["std"][0] + w["mean"][0]  # noqa: E731
        if not truth_drawn:
          ax.plot(t, scale(w["targets"][:, 0]), color="black", lw=1.5,
                  label="truth" if k == 0 else None)
          ax.plot(t, scale(w["naive"][:, 0]), color="gray", ls=":",
                  label="seasonal naive" if k == 0 else None)
        ax.plot(t, scale(forecast[k].reshape(horizon)), lw=1,
                color="C0" if model == "lstm" else "C1", label=model if k == 0 else None)
      truth_drawn = True
    ax.set_xlabel("time step (months since 1949-01)" if dataset == "airline"
                  else "time step (years since 1700)")
    ax.set_title(f"{dataset}: test forecasts, {horizon} steps from each origin")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, f"forecasts_{dataset}.png"), dpi=100)
    print("wrote", os.path.join(HERE, f"forecasts_{dataset}.png"))


if __name__ == "__main__":
  app.run(main)
