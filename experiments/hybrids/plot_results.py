"""Curves, strips and the results table of experiments/hybrids/README.md from the workdirs
of `run_reduced.sh`.

  PYTHONPATH=$PWD python experiments/hybrids/plot_results.py --runs=workdirs/hybrids \
      [--out=experiments/hybrids]
"""

import json
import os
import shutil

from absl import app, flags  # pylint: disable=g-multiple-import

from cnnrnn.analysis import curves, hybrids

_RUNS = flags.DEFINE_string("runs", "workdirs/hybrids", "Folder of the run_reduced.sh workdirs.")
_OUT = flags.DEFINE_string("out", "experiments/hybrids", "Folder for the PNGs.")

VIDEO = {"single frame": "single_frame", "CNN + LSTM": "lstm", "CNN + BiLSTM": "bilstm"}
CAPTIONS = {"no attention": "no_attention", "soft attention": "attention",
            "soft attention, lambda 0": "attention_lambda0"}


def _test(workdir: str) -> dict:
  """The last test record of a workdir."""
  records = curves.read_metrics(workdir)
  return [r for r in records if r["split"] == "test"][-1]


def main(argv):
  del argv
  runs, out = _RUNS.value, _OUT.value
  for label, chance in (("direction", 0.25), ("identity_6ep", 0.1)):
    curves.plot_runs({k: os.path.join(runs, f"mm_{v}_{label}") for k, v in VIDEO.items()},
                     os.path.join(out, f"video_{label}.png"), metric="accuracy",
                     log_y=False, baseline=chance,
                     title=f"Moving MNIST, {label.replace('_6ep', ' (6 epochs)')}: test accuracy "
                     "while training")
  curves.plot_runs({k: os.path.join(runs, f"captions_{v}") for k, v in CAPTIONS.items()},
                   os.path.join(out, "captions_exact_match.png"), metric="exact_match",
                   log_y=False, title="MNIST captions: greedy exact match while training")
  for label, v in VIDEO.items():
    for task in ("identity", "identity_6ep", "direction"):
      record = _test(os.path.join(runs, f"mm_{v}_{task}"))
      print(f"video {label:14s} {task:12s}", json.dumps(record))
  print("video single frame, direction at 3 pixels a frame",
        json.dumps(_test(os.path.join(runs, "mm_single_frame_direction_speed3"))))
  for label, v in CAPTIONS.items():
    for suffix in ("", "_beam4"):
      print(f"captions {label:14s} {suffix or 'greedy'}",
            json.dumps(_test(os.path.join(runs, f"captions_{v}{suffix}"))))
  # Strips: the first two test captions with the attention of lambda 0 and the first with
  # lambda 1; a clip of the single-frame and the LSTM model on direction.
  strips = os.path.join(runs, "strips")
  for run, keep in (("attention_lambda0", 2), ("attention", 1)):
    paths = hybrids.plot_workdir_strips(os.path.join(runs, f"captions_{run}"),
                                        os.path.join(strips, run), num_examples=keep)
    for path in paths:
      shutil.copy(path, os.path.join(out, f"{run}_{os.path.basename(path)}"))
  for v in ("single_frame", "lstm"):  # The third test clip: the single frame gets it wrong.
    paths = hybrids.plot_workdir_strips(os.path.join(runs, f"mm_{v}_direction"),
                                        os.path.join(strips, v), num_examples=3)
    shutil.copy(paths[2], os.path.join(out, f"clip_{v}_direction.png"))


if __name__ == "__main__":
  app.run(main)
