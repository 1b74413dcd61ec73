"""Table and plot of the transfer experiment from its workdirs.

  python experiments/transfer/summarize.py --runs=RUNS [--out=experiments/transfer/accuracy.png] \
      [--source2=RUNS2 --source2_label="4,000-step source"]

RUNS holds one workdir per run, named STRATEGY_N_sSEED (scratch_5000_s0 is scratch on all
5,000 images per class); each run's final test accuracy is the "test" row of its
metrics.jsonl. Prints a Markdown table (mean over seeds, and each seed) and writes the plot:
test accuracy against labels per class (log x), one line per strategy, the mean over seeds
with each seed as a dot. --source2: the transfer runs of the same grid from another source
network (the scratch runs are the same and stay in RUNS), printed as a second table and
drawn dashed in the same colours; a scratch_5000_sK run there is the reference at that
source's budget (dotted).
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


def table(results: dict, sizes: list[int], strategies=STRATEGIES) -> None:
  """Prints the Markdown table of `results` (mean over seeds, then each seed)."""
  print("| strategy | " + " | ".join(f"{n} / class" for n in sizes) + " |")
  print("|---|" + "---:|" * len(sizes))
  for s in strategies:
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", required=True)
  parser.add_argument("--source2", default=None,
                      help="transfer runs of the same grid from a second source network")
  parser.add_argument("--source2_label", default="second source")
  parser.add_argument("--out", default="experiments/transfer/accuracy.png")
  args = parser.parse_args()
  results = collect(args.runs)
  sizes = sorted({n for s, n in results if n != 5000})
  table(results, sizes)
  second = collect(args.source2) if args.source2 else {}
  if second:
    print(f"\n{args.source2_label}:\n")
    table(second, sizes, [s for s in STRATEGIES if s != "scratch"])
  reference = results.get(("scratch", 5000), {})
  if reference:
    print("\nscratch on all 5,000 / class: "
          + ", ".join(f"seed {k} {100 * v:.2f}%" for k, v in sorted(reference.items())))
  # A scratch run on all 5,000 / class in --source2: the reference at that source's budget.
  reference2 = second.get(("scratch", 5000), {})
  if reference2:
    print(f"scratch on all 5,000 / class, {args.source2_label}'s budget: "
          + ", ".join(f"seed {k} {100 * v:.2f}%" for k, v in sorted(reference2.items())))

  fig, ax = plt.subplots(figsize=(6.4, 4.4) if not second else (10.0, 4.8))
  for k, s in enumerate(STRATEGIES):
    for runs, style, suffix in ((results, "-o", ""), (second, "--s", f", {args.source2_label}")):
      points = [(n, runs[(s, n)]) for n in sizes if (s, n) in runs]
      if not points:
        continue
      xs = [n for n, _ in points]
      means = [100 * sum(v.values()) / len(v) for _, v in points]
      ax.plot(xs, means, style, color=f"C{k}", label=LABELS[s] + suffix)
      for n, v in points:
        ax.scatter([n] * len(v), [100 * a for a in v.values()], s=10, color=f"C{k}", alpha=0.5)
  if reference:
    ref = 100 * sum(reference.values()) / len(reference)
    ax.axhline(ref, color="k", ls="--", lw=1, label=f"scratch, all 5,000 / class ({ref:.1f}%)")
  if reference2:
    ref = 100 * sum(reference2.values()) / len(reference2)
    ax.axhline(ref, color="k", ls=":", lw=1,
               label=f"scratch, all 5,000 / class, {args.source2_label}'s budget ({ref:.1f}%)")
  ax.set_xscale("log")
  ax.set_xlabel("labels per class (classes 5-9 of CIFAR-10)")
  ax.set_ylabel("test accuracy (%), 5 classes")
  ax.set_title("Transfer from a ResNet-20 pretrained on classes 0-4")
  ax.grid(alpha=0.3, which="both")
  if second:  # Beside the axes: eleven entries would cover the points.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  else:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
