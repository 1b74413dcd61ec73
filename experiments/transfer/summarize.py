"""Table and plot of the transfer experiment from its workdirs.

  python experiments/transfer/summarize.py --runs=RUNS [--out=experiments/transfer/accuracy.png]

RUNS holds one workdir per run, named STRATEGY_N_sSEED (scratch_5000_s0 is scratch on all
5,000 images per class); each run's final test accuracy is the "test" row of its
metrics.jsonl. Prints a Markdown table (mean over seeds, and each seed) and writes the plot:
test accuracy against labels per class (log x), one line per strategy, the mean over seeds
with each seed as a dot.
"""

import argparse
import collections
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

STRATEGIES = ("scratch", "linear_probe", "full", "progressive")
LABELS = {"scratch": "from scratch", "linear_probe": "linear probe",
          "full": "full fine-tuning", "progressive": "progressive unfreezing"}


def final_accuracy(workdir: str) -> float | None:
  """The final test accuracy logged in `workdir`/metrics.jsonl (None if it has none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  acc = None
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if row.get("split") == "test":
        acc = row["accuracy"]
  return acc


def collect(runs: str) -> dict[tuple[str, int], dict[int, float]]:
  """(strategy, labels per class) -> {seed: test accuracy}."""
  results = collections.defaultdict(dict)
  for name in sorted(os.listdir(runs)):
    match = re.fullmatch(r"(\w+?)_(\d+)_s(\d+)", name)
    if not match:
      continue
    acc = final_accuracy(os.path.join(runs, name))
    if acc is not None:
      results[(match.group(1), int(match.group(2)))][int(match.group(3))] = acc
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", required=True)
  parser.add_argument("--out", default="experiments/transfer/accuracy.png")
  args = parser.parse_args()
  results = collect(args.runs)
  sizes = sorted({n for s, n in results if n != 5000})
  print("| strategy | " + " | ".join(f"{n} / class" for n in sizes) + " |")
  print("|---|" + "---:|" * len(sizes))
  for s in STRATEGIES:
    cells = []
    for n in sizes:
      seeds = results.get((s, n), {})
      if not seeds:
        cells.append("not run")
        continue
      mean = 100 * sum(seeds.values()) / len(seeds)
      each = ", ".join(f"{100 * seeds[k]:.1f}" for k in sorted(seeds))
      cells.append(f"**{mean:.1f}%**" + (f" ({each})" if len(seeds) > 1 else ""))
    print(f"| {LABELS[s]} | " + " | ".join(cells) + " |")
  reference = results.get(("scratch", 5000), {})
  if reference:
    print(f"\nscratch on all 5,000 / class: "
          + ", ".join(f"seed {k} {100 * v:.2f}%" for k, v in sorted(reference.items())))

  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for s in STRATEGIES:
    points = [(n, results[(s, n)]) for n in sizes if (s, n) in results]
    if not points:
      continue
    xs = [n for n, _ in points]
    means = [100 * sum(v.values()) / len(v) for _, v in points]
    line, = ax.plot(xs, means, "-o", label=LABELS[s])
    for n, v in points:
      ax.scatter([n] * len(v), [100 * a for a in v.values()], s=10, color=line.get_color(),
                 alpha=0.5)
  if reference:
    ref = 100 * sum(reference.values()) / len(reference)
    ax.axhline(ref, color="k", ls="--", lw=1, label=f"scratch, all 5,000 / class ({ref:.1f}%)")
  ax.set_xscale("log")
  ax.set_xlabel("labels per class (classes 5-9 of CIFAR-10)")
  ax.set_ylabel("test accuracy (%), 5 classes")
  ax.set_title("Transfer from a ResNet-20 pretrained on classes 0-4")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
