"""Learning curves of the Multi30k runs: training loss, validation loss and validation BLEU
(greedy, sacreBLEU 13a) against the step (the last point, an x, is the final test2016
evaluation), one line per model, from each run's metrics.jsonl.

  python experiments/translation/plot_curves.py --out=experiments/translation/curves.png \
      "Transformer=/work/runs/14/transformer" "Bahdanau=/work/runs/14/bahdanau" ...
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def read(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def main(argv: list[str]) -> None:
  out = next(a.split("=", 1)[1] for a in argv if a.startswith("--out="))
  runs = [a.split("=", 1) for a in argv if not a.startswith("--")]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  panels = (("train", "loss", "training loss (cross-entropy)"),
            ("eval", "nll", "validation loss (x: test2016)"),
            ("eval", "bleu", "validation BLEU, greedy, 13a (x: test2016)"))
  for label, workdir in runs:
    rows = read(workdir)
    for ax, (split, key, title) in zip(axes, panels):
      points = [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r]
      if points:
        line, = ax.plot(*zip(*points), marker="o" if split != "train" else None, label=label)
        if split == "eval":  # The final evaluation is on test2016 (x), not validation.
          test = [(r["step"], r[key]) for r in rows if r.get("split") == "test" and key in r]
          ax.scatter(*zip(*test), marker="x", s=60, color=line.get_color())
      ax.set_title(title)
      ax.set_xlabel("step (batch 64)")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=90)


if __name__ == "__main__":
  main(sys.argv[1:])
