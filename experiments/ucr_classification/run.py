"""UCR classification with the FCN and ResNet of Wang, Yan & Oates 2017 (and the LSTM-FCN of
Karim et al. 2017), at a reduced budget: test error rates beside the paper's.

  python experiments/ucr_classification/run.py --root=workdirs/ucr [--steps=500]
  python -m cnnrnn.report --experiments=ucr_classification

Each run is `python -m cnnrnn.main --config=configs/ucr_classification.py:MODEL,DATASET`;
its final test accuracy comes from the workdir's metrics.jsonl. Writes results.json beside
this file.
"""

import os

from absl import app, flags

from cnnrnn.analysis import experiment_runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ROOT = flags.DEFINE_string("root", "workdirs/ucr", "Folder for the runs' workdirs.")
_STEPS = flags.DEFINE_integer("steps", 500, "Training steps per run.")
_RUNS = flags.DEFINE_list("runs", ["ts_fcn", "ts_resnet"], "Models to run.")
DATASETS = {"ucr_gunpoint": "GunPoint", "ucr_italy_power_demand": "ItalyPowerDemand",
            "ucr_arrowhead": "ArrowHead"}
MODELS = {"ts_fcn": "FCN", "ts_resnet": "ResNet", "lstm_fcn": "LSTM-FCN",
          "rnn_classifier": "LSTM"}
# Test error rates of the FCN and ResNet of Wang et al. 2017 as its authors list them in the
# "Classification Results" table of their repository's README
# (github.com/cauchyturing/UCR_Time_Series_Classification_Deep_Learning_Baseline, 85 UCR
# datasets). GunPoint and ItalyPower are among the paper's 44 datasets; ArrowHead, we
# believe, is not (only these two are in the summary table).
PAPER = {("ts_fcn", "ucr_gunpoint"): 0.0, ("ts_resnet", "ucr_gunpoint"): 0.007,
         ("ts_fcn", "ucr_italy_power_demand"): 0.030,
         ("ts_resnet", "ucr_italy_power_demand"): 0.040,
         ("ts_fcn", "ucr_arrowhead"): 0.120, ("ts_resnet", "ucr_arrowhead"): 0.183}
IN_PAPER = ("ucr_gunpoint", "ucr_italy_power_demand")
SOURCE = ("Wang, Yan & Oates 2017; error rates as the authors list them in their repository "
          "(cauchyturing/UCR_Time_Series_Classification_Deep_Learning_Baseline, README)")


def main(argv):
  del argv
  data_dir = os.path.join(_ROOT.value, "tfds")
  rows, summary = [], []  # summary: the rows on the paper's own datasets
  for dataset, problem in DATASETS.items():
    for model in _RUNS.value:
      arg = f"{model},{dataset},{_STEPS.value}"
      workdir = os.path.join(_ROOT.value, f"{model}_{dataset}")
      m, wall = experiment_runs.train(f"configs/ucr_classification.py:{arg}", workdir,
                                      f"--config.dataset.data_dir={data_dir}", cwd=ROOT)
      rows.append(dict(
          id=f"{model}_{dataset}", setting=f"{MODELS[model]}, {problem}",
          config=f"configs/ucr_classification.py:{arg}", metric="test error rate", unit="",
          fmt=".3f", paper=PAPER.get((model, dataset)), ours=round(1 - m["accuracy"], 4),
          label=f"{MODELS[model]}, {problem}",
          note=(f"{_STEPS.value} steps of batch 16 (paper: 1,500-2,000 epochs); {wall:.0f} s"
                + ("" if dataset in IN_PAPER else "; paper column: the authors' "
                   "repository's table of 85 datasets"))))
      if dataset in IN_PAPER:
        summary.append(rows[-1]["id"])
      print(rows[-1], flush=True)
  results = {
      "title": "UCR time-series classification (Wang, Yan & Oates 2017)",
      "source": "experiments/ucr_classification/run.py (this file's runs; workdirs not in the repository)",
      "paper": SOURCE,
      "claim": "the FCN and ResNet are strong baselines on the UCR archive",
      "hardware": f"{experiment_runs.cpu_description()}, 2 cores shared with other jobs",
      "wall_time": "1-3 minutes per run",
      "rows": rows,
      "summary": {"rows": summary,
                  "note": f"test error rate after {_STEPS.value} steps (paper: 1,500-2,000 epochs)"},
  }
  experiment_runs.write_results(os.path.dirname(os.path.abspath(__file__)), results)


if __name__ == "__main__":
  app.run(main)
