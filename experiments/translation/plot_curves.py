"""Learning curves of the Multi30k runs: training loss, validation loss and validation BLEU
(greedy) against the step or the epoch (the last point, an x, is the final test2016
evaluation), one line per model, from each run's metrics.jsonl. Losses are the cross-entropy
without label smoothing (`nll`).

  python experiments/translation/plot_curves.py --out=experiments/translation/curves.png \
      [--x=epoch] [--bleu=bleu_tok] \
      "Transformer=workdirs/translation/transformer" "Bahdanau=workdirs/translation/bahdanau" ...

--x=epoch puts runs of different batch sizes on one axis (step * batch_size / 29,000, the
batch size from each run's config.json); --bleu=bleu_tok plots BLEU on lowercased tokens
(the published numbers' protocol) instead of sacreBLEU 13a.
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
  per_epoch = any(a == "--x=epoch" for a in argv)
  bleu = next((a.split("=", 1)[1] for a in argv if a.startswith("--bleu=")), "bleu")
  runs = [a.split("=", 1) for a in argv if not a.startswith("--")]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  panels = (("train", "nll", "training loss (cross-entropy)"),
            ("eval", "nll", "validation loss (x: test2016)"),
            ("eval", bleu, "validation BLEU, greedy, "
             f"{'lowercased tokens' if bleu == 'bleu_tok' else '13a'} (x: test2016)"))
  for label, workdir in runs:
    rows = read(workdir)
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      batch = json.load(f)["batch_size"]
    x = (lambda step: step * batch / 29_000) if per_epoch else (lambda step: step)
    for ax, (split, key, title) in zip(axes, panels):
      points = [(x(r["step"]), r[key]) for r in rows if r.get("split") == split and key in r]
      if points:
        line, = ax.plot(*zip(*points), marker="o" if split != "train" else None, label=label)
        if split == "eval":  # The final evaluation is on test2016 (x), not validation.
          test = [(x(r["step"]), r[key]) for r in rows if r.get("split") == "test" and key in r]
          ax.scatter(*zip(*test), marker="x", s=60, color=line.get_color())
      ax.set_title(title)
      ax.set_xlabel("epoch (29,000 sentence pairs)" if per_epoch else "step (batch 64)")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=90)


if __name__ == "__main__":
  main(sys.argv[1:])
