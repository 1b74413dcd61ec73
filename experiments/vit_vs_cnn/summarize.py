"""Table and plot of the ViT-vs-ResNet-20 experiment from its workdirs.

  python experiments/vit_vs_cnn/summarize.py --runs=RUNS [--log=RUNS/../log.txt] \\
      [--long=RUNS/long] [--out=experiments/vit_vs_cnn/accuracy.png]

RUNS holds one workdir per run, named MODEL_PERCENT (resnet20_10, vit_100, ...). Prints a
Markdown table (steps, final test accuracy, and the run's wall time when --log, the run
script's log with "end NAME rc=0 wall=Ss" lines, is given) and writes a two-panel plot:
test accuracy against the share of the training set (log x), and the training loss
against the step. --long: a folder of runs named the same way at a larger budget, drawn
as stars (accuracy) and dotted lines (loss).
"""

import argparse
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

MODELS = {"resnet20": "ResNet-20 (0.27M params)", "vit": "ViT patch 4, width 128, depth 6 (0.81M)"}


def read(workdir: str) -> tuple[list[dict], dict | None]:
  """(training rows, final test row) of `workdir`/metrics.jsonl."""
  train, test = [], None
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if row.get("split") == "train":
        train.append(row)
      elif row.get("split") == "test":
        test = row
  return train, test


def wall_times(log: str | None, prefix: str) -> dict[str, int]:
  """Run name -> wall seconds, from the run script's log."""
  if not log or not os.path.exists(log):
    return {}
  times = {}
  with open(log) as f:
    for line in f:
      match = re.search(rf"end {re.escape(prefix)}(\w+) rc=0 wall=(\d+)s", line)
      if match:
        times[match.group(1)] = int(match.group(2))
  return times


def collect(runs: str, walls: dict[str, int]) -> dict:
  """(model, percent) -> (training rows, final test row, wall seconds or None)."""
  results = {}
  for name in sorted(os.listdir(runs)):
    match = re.fullmatch(r"(resnet20|vit)_(\d+)", name)
    if match and os.path.exists(os.path.join(runs, name, "metrics.jsonl")):
      train, test = read(os.path.join(runs, name))
      if test is not None:
        results[(match.group(1), int(match.group(2)))] = (train, test, walls.get(name))
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", required=True)
  parser.add_argument("--log", default=None)
  parser.add_argument("--prefix", default="vc/", help="run names' prefix in the log")
  parser.add_argument("--long", default=None, help="runs at a larger budget")
  parser.add_argument("--out", default="experiments/vit_vs_cnn/accuracy.png")
  args = parser.parse_args()
  results = collect(args.runs, wall_times(args.log, args.prefix))
  long = collect(args.long, {}) if args.long else {}
  print("| model | training data | steps (batch 128) | epochs | wall (1 core) | test accuracy |")
  print("|---|---:|---:|---:|---:|---:|")
  for runs, suffix in ((results, ""), (long, ", larger budget")):
    for (model, pct), (train, test, wall) in sorted(runs.items(), key=lambda kv: kv[0][::-1]):
      steps = train[-1]["step"]
      epochs = steps * 128 / (500 * pct)
      print(f"| {MODELS[model]}{suffix} | {pct}% ({500 * pct:,} images) | {steps} | "
            f"{epochs:.1f} | {f'{wall} s' if wall else '?'} | "
            f"**{100 * test['accuracy']:.2f}%** |")

  fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2))
  for k, (model, label) in enumerate(MODELS.items()):
    color = f"C{k}"
    points = sorted((pct, r[1]["accuracy"]) for (m, pct), r in results.items() if m == model)
    if points:
      left.plot([p for p, _ in points], [100 * a for _, a in points], "-o", color=color,
                label=label)
    for (m, pct), (train, test, _) in sorted(long.items()):
      if m == model:
        left.plot([pct], [100 * test["accuracy"]], "*", color=color, markersize=13,
                  label=f"{model}, {train[-1]['step']} steps (larger budget)")
    for (m, pct), (train, _, _) in sorted(results.items()):
      if m == model:
        right.plot([r["step"] for r in train], [r["loss"] for r in train],
                   "-" if pct == 100 else "--", color=color, alpha=1.0 if pct == 100 else 0.6,
                   label=f"{model}, {pct}% of the data")
    for (m, pct), (train, _, _) in sorted(long.items()):
      if m == model:
        right.plot([r["step"] for r in train], [r["loss"] for r in train], ":", color=color,
                   label=f"{model}, {pct}%, larger budget")
  left.set_xscale("log")
  left.set_xlabel("share of the CIFAR-10 training set (%)")
  left.set_ylabel("test accuracy (%), 10,000 test images")
  left.set_title("Same wall-clock budget per run")
  left.grid(alpha=0.3, which="both")
  left.legend(fontsize=8)
  right.set_xlabel("step")
  right.set_ylabel("training loss (augmented batches)")
  right.grid(alpha=0.3)
  right.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
