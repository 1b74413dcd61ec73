"""Plots predicted masks beside the truth for a few test scenes, scratch against transfer.

  python experiments/digit_segmentation/plot_masks.py --root=workdirs/segmentation

Reads the `scratch` and `transfer` workdirs that `run.py` wrote (through the one run loader,
`cnnrnn.train.runs.load_run`), predicts the first `--scenes` test scenes with each, and
writes `masks.png` beside this file: one row per scene with the image, the true labels and
each model's argmax labels (background black, digit d in the colour of class 1 + d), each
prediction titled with that scene's pixel accuracy. It also prints each run's per-class test
IoU (`iou_c{k}`, from the run's final metrics) as a Markdown table.
"""

import os

from absl import app, flags
import matplotlib

matplotlib.use("Agg")
from matplotlib import colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnnrnn.analysis import experiment_runs  # noqa: E402
from cnnrnn.data import sources, streams  # noqa: E402
from cnnrnn.train.runs import load_run  # noqa: E402

_ROOT = flags.DEFINE_string("root", "workdirs/segmentation", "The runs' workdirs.")
_SCENES = flags.DEFINE_integer("scenes", 5, "Test scenes to plot (the split's first ones).")
MODES = ("scratch", "transfer")
HERE = os.path.dirname(os.path.abspath(__file__))
# Background black, then ten distinct colours for the digits 0-9 (classes 1-10).
CLASSES = colors.ListedColormap(["black", *plt.get_cmap("tab10").colors])


def predict(workdir: str, count: int) -> tuple[np.ndarray, dict]:
  """(argmax labels [N, S, S], the first `count` test examples as a batch) of one run."""
  # Absolute: a relative checkpoint path fails to restore (Orbax reads no item metadata).
  run = load_run(os.path.abspath(workdir), task="segmentation")
  c = run.config
  dataset = sources.load(c.dataset.name, c.dataset.data_dir, c.dataset.manual_dir,
                         options=c.dataset.to_dict())
  test = dataset.split("test")
  batch = {k: np.stack([test[i][k] for i in range(count)]) for k in ("image", "segmentation")}
  images = streams.preprocessor(c.dataset, dataset, train=False)(dict(batch))["image"]
  logits = run.model.apply(run.variables, images, train=False)  # [N, S, S, K]
  return np.asarray(logits).argmax(-1), batch


def iou_table(workdirs: dict[str, str]) -> str:
  """Markdown: one row per class, the final test IoU of each run (— where not logged)."""
  metrics = {mode: experiment_runs.final_metrics(w) for mode, w in workdirs.items()}
  names = ["background", *(f"digit {d}" for d in range(10))]
  lines = ["| class | " + " | ".join(f"IoU, {m}" for m in metrics) + " |",
           "|---|" + "---:|" * len(metrics)]
  for k, name in enumerate([*names, "mean (mIoU)"]):
    key = f"iou_c{k}" if k < len(names) else "miou"
    cells = [f"{m[key]:.3f}" if key in m else "—" for m in metrics.values()]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  print(iou_table({mode: os.path.join(_ROOT.value, mode) for mode in MODES}))
  n = _SCENES.value
  predicted = {}
  for mode in MODES:
    predicted[mode], batch = predict(os.path.join(_ROOT.value, mode), n)
  truth = batch["segmentation"]
  fig, axes = plt.subplots(n, 2 + len(MODES), figsize=(2.2 * (2 + len(MODES)), 2.2 * n))
  for i in range(n):
    panels = [("image", batch["image"][i, ..., 0], "gray", None),
              ("truth", truth[i], CLASSES, None)]
    panels += [(mode, predicted[mode][i], CLASSES, float(np.mean(predicted[mode][i] == truth[i])))
               for mode in MODES]
    for ax, (name, picture, cmap, accuracy) in zip(axes[i], panels):
      ax.imshow(picture, cmap=cmap, vmin=0, vmax=255 if name == "image" else 10,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if accuracy is not None:
        ax.set_title(f"{name}: {accuracy:.1%} of pixels", fontsize=8)
      elif i == 0:
        ax.set_title(name, fontsize=9)
  handles = [plt.Rectangle((0, 0), 1, 1, color=CLASSES(k)) for k in range(11)]
  fig.legend(handles, ["background", *(f"digit {d}" for d in range(10))], loc="lower center",
             ncol=6, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  path = os.path.join(HERE, "masks.png")
  fig.savefig(path, dpi=80)
  print("wrote", path)


if __name__ == "__main__":
  app.run(main)
