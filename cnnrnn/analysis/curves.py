"""Training curves from a workdir's metrics.jsonl, as a PNG.

  python -m cnnrnn.analysis.curves --workdir=workdirs/lenet5 [--out=curves.png] \
      [--metrics=loss,accuracy] [--reference="accuracy=0.9125:He et al. 2015"]
"""

import json
import os
from collections.abc import Sequence


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir`/metrics.jsonl, one per (step, split): the last one logged.

  The one reader of the file (curves, `cnnrnn.report`, the experiments). A resumed run
  logs again the steps after its checkpoint that the interrupted run had logged already;
  the later record is the one the resumed computation produced. Records keep the order of
  their last appearance; a line cut short by a kill is skipped.

  Raises:
    FileNotFoundError: no metrics.jsonl.
  """
  records = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # Blank, or cut short.
      if isinstance(record, dict):
        key = (record.get("step"), record.get("split"))
        records.pop(key, None)  # The later record goes last.
        records[key] = record
  return list(records.values())


def plot_curves(workdir: str, out: str | None = None,
                metrics: Sequence[str] = ("loss", "accuracy"), title: str | None = None,
                references: dict[str, tuple[float, str]] | None = None) -> str:
  """One panel per metric, a line per split (train, eval) and a marker for the final test.

  `references` maps a metric to (value, label), drawn as a dashed horizontal line (e.g. a
  paper's number).

  Returns:
    The path of the PNG written (default: `workdir`/curves.png).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  records = read_metrics(workdir)
  metrics = [m for m in metrics if any(m in r for r in records)]
  if not metrics:
    raise ValueError(f"none of the requested metrics appear in {workdir}/metrics.jsonl")
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
  for ax, name in zip(axes[0], metrics):
    for split, style in (("train", "-"), ("eval", "o-")):
      points = {r["step"]: r[name] for r in records if r["split"] == split and name in r}
      if points:  # A resumed run may log a step twice; the later record wins.
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], style, ms=3, label=split)
    for r in records:
      if r["split"] == "test" and name in r:
        ax.plot([r["step"]], [r[name]], "r*", ms=10, label=f"test {r[name]:.4g}")
    if references and name in references:
      value, label = references[name]
      ax.axhline(value, color="gray", ls="--", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    if name in ("loss", "perplexity"):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title or os.path.basename(os.path.normpath(workdir)))
  fig.tight_layout()
  out = out or os.path.join(workdir, "curves.png")
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def plot_runs(workdirs: dict[str, str], out: str, *, metric: str = "loss", split: str = "eval",
              log_y: bool = True, baseline: float | None = None, title: str | None = None) -> str:
  """One metric of several runs on one axis (e.g. three cells on the same task).

  Args:
    workdirs: legend label -> workdir.
    out: PNG path.
    metric: metric name.
    split: "train" or "eval".
    log_y: log-scale y axis.
    baseline: a horizontal reference line (e.g. a trivial predictor's loss).
    title: figure title.

  Returns:
    `out`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6.4, 4))
  for label, workdir in workdirs.items():
    points = {r["step"]: r[metric] for r in read_metrics(workdir) if r["split"] == split and metric in r}
    if not points:
      raise ValueError(f"{workdir}/metrics.jsonl has no {split!r} records of {metric!r}")
    steps = sorted(points)
    ax.plot(steps, [points[s] for s in steps], "o-", ms=3, label=label)
  if baseline is not None:
    ax.axhline(baseline, color="gray", ls="--", label=f"baseline {baseline:.3g}")
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel(f"{split} {metric}")
  ax.grid(alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def _parse_references(specs: Sequence[str]) -> dict[str, tuple[float, str]]:
  """"metric=value:label" strings -> {metric: (value, label)}."""
  references = {}
  for spec in specs:
    metric, _, rest = spec.partition("=")
    value, _, label = rest.partition(":")
    try:
      references[metric] = (float(value), label or f"{metric} {value}")
    except ValueError as e:
      raise ValueError(f"--reference={spec!r}; expected metric=value[:label]") from e
  return references


def main(argv):
  del argv
  print(plot_curves(_WORKDIR.value, _OUT.value, _METRICS.value, _TITLE.value,
                    _parse_references(_REFERENCE.value)))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import

  _WORKDIR = flags.DEFINE_string("workdir", None, "A cnnrnn workdir.", required=True)
  _OUT = flags.DEFINE_string("out", None, "PNG path (default: WORKDIR/curves.png).")
  _METRICS = flags.DEFINE_list("metrics", ["loss", "accuracy"], "Metrics to plot.")
  _TITLE = flags.DEFINE_string("title", None, "Figure title (default: the workdir's name).")
  _REFERENCE = flags.DEFINE_multi_string(
      "reference", [], "metric=value[:label]: a dashed reference line (repeatable).")
  app.run(main)
