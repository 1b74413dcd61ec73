"""Mackey-Glass (tau = 17): NRMSE at T_p = 1, 6 and 84 steps ahead for a tanh RNN, an LSTM and a
GRU (configs/mackey_glass.py), the table of Gers, Eck & Schmidhuber 2001 in our setting.

  python experiments/mackey_glass/run.py --root=workdirs/mackey_glass [--steps=600]
  python -m cnnrnn.report --experiments=mackey_glass

Each run is `python -m cnnrnn.main --config=configs/mackey_glass.py:CELL,T_P`; its final
test metrics (the last 20 % of the series) come from the workdir's metrics.jsonl. Writes
results.json beside this file.
"""

import os

from absl import app, flags

from cnnrnn.analysis import experiment_runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ROOT = flags.DEFINE_string("root", "workdirs/mackey_glass", "Folder for the runs' workdirs.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps per run.")
CELLS = {"simple": "tanh RNN", "lstm": "LSTM", "gru": "GRU"}
HORIZONS = (1, 6, 84)


def main(argv):
  del argv
  data_dir = os.path.join(_ROOT.value, "tfds")
  rows = []
  for horizon in HORIZONS:
    for cell, label in CELLS.items():
      arg = f"{cell},{horizon},{_STEPS.value}"
      workdir = os.path.join(_ROOT.value, f"{cell}_{horizon}")
      m, wall = experiment_runs.train(f"configs/mackey_glass.py:{arg}", workdir,
                                      f"--config.dataset.data_dir={data_dir}", cwd=ROOT)
      rows.append(dict(
          id=f"{cell}_{horizon}", setting=f"{label}, T_p = {horizon}",
          config=f"configs/mackey_glass.py:{arg}", metric="test NRMSE at t + T_p", unit="",
          fmt=".4f", paper=None, ours=round(m["last_nrmse"], 5), label=f"{label}, T_p={horizon}",
          note=(f"naive x(t+T_p) = x(t): {m['naive_last_nrmse']:.3f}; {_STEPS.value} steps, "
                f"{wall:.0f} s")))
      print(rows[-1], flush=True)
  results = {
      "title": "Mackey-Glass tau=17, T_p steps ahead (Gers, Eck & Schmidhuber 2001)",
      "source": "experiments/mackey_glass/run.py (this file's runs; workdirs not in the repository)",
      "paper": "Gers, Eck & Schmidhuber 2001",
      "claim": "LSTM predicts Mackey-Glass, but no better than time-window approaches",
      "hardware": f"{experiment_runs.cpu_description()}, 2 cores shared with other jobs",
      "wall_time": "about 1-2 minutes per run",
      "rows": rows,
      "summary": {"rows": ["simple_84", "lstm_84", "gru_84"],
                  "note": "test NRMSE at T_p = 84; the paper's table was not at hand offline",
                  "numeric_paper": False},
  }
  experiment_runs.write_results(os.path.dirname(os.path.abspath(__file__)), results)


if __name__ == "__main__":
  app.run(main)
