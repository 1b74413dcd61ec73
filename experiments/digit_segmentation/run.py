"""Digit-scene segmentation: the segmenter (CIFAR ResNet-20 backbone, FCN decoder) from scratch
against the same model whose backbone was first trained to classify MNIST digits, at a
reduced budget (configs/digit_segmentation.py).

  python experiments/digit_segmentation/run.py --root=workdirs/segmentation
  python -m cnnrnn.report --experiments=digit_segmentation

Runs, in order: `pretrain` (the MNIST classifier), `scratch`, `transfer`
(--config.transfer.source=<the pretrain workdir>). The scene size, digit count and steps
below are the reduced budget of the committed results. Writes results.json beside this file.
"""

import os

from absl import app, flags

from cnnrnn.analysis import experiment_runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ROOT = flags.DEFINE_string("root", "workdirs/segmentation", "Folder for the runs' workdirs.")
_MNIST = flags.DEFINE_string("mnist", "../shared/datasets/mnist", "MNIST's IDX files.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 200, "Classifier training steps.")
_STEPS = flags.DEFINE_integer("steps", 150, "Segmenter training steps.")
SCENE = ["--config.dataset.size=40", "--config.dataset.num_digits=2",
         "--config.dataset.num_train=3200", "--config.dataset.num_test=400",
         "--config.batch_size=16"]


def run(arg: str, workdir: str, *flags_) -> tuple[dict, float]:
  return experiment_runs.train(f"configs/digit_segmentation.py:{arg}", workdir,
                               f"--config.dataset.data_dir={os.path.join(_ROOT.value, 'tfds')}",
                               f"--config.dataset.manual_dir={_MNIST.value}", *flags_, cwd=ROOT)


def main(argv):
  del argv
  # Absolute: a relative transfer.source fails to restore (Orbax reads no item metadata).
  pretrain = os.path.abspath(os.path.join(_ROOT.value, "pretrain"))
  source, source_wall = run(f"pretrain,{_PRETRAIN_STEPS.value}", pretrain)
  rows = []
  for mode in ("scratch", "transfer"):
    extra = [f"--config.transfer.source={pretrain}"] if mode == "transfer" else []
    m, wall = run(f"{mode},{_STEPS.value}", os.path.join(_ROOT.value, mode), *SCENE, *extra)
    rows.append(dict(
        id=mode, setting=f"segmenter, {mode}" + (
            f" (backbone from an MNIST classifier at {source['accuracy']:.2%} test accuracy, "
            f"{_PRETRAIN_STEPS.value} steps, {source_wall:.0f} s)" if mode == "transfer" else ""),
        config=f"configs/digit_segmentation.py:{mode},{_STEPS.value} " + " ".join(SCENE),
        metric="test mIoU (11 classes)", unit="", fmt=".3f", paper=None,
        ours=round(m["miou"], 4), label=f"segmentation, {mode}",
        note=(f"pixel accuracy {m['pixel_accuracy']:.3f}, background IoU {m['iou_c0']:.3f}; "
              f"{_STEPS.value} steps of batch 16, {wall:.0f} s")))
    print(rows[-1], flush=True)
  results = {
      "title": "Digit-scene segmentation: scratch vs an MNIST-pretrained backbone",
      "source": "experiments/digit_segmentation/run.py (this file's runs; workdirs not in the repository)",
      "paper": "the course: \"CNNs excel at ... segmentation\"; transfer helps with little training",
      "claim": "a pretrained backbone gives a better mIoU at the same (small) budget",
      "hardware": f"{experiment_runs.cpu_description()}, 2 cores shared with other jobs",
      "wall_time": "a few minutes per run",
      "rows": rows,
      "summary": {"rows": ["scratch", "transfer"], "note": f"test mIoU after {_STEPS.value} steps",
                  "numeric_paper": False},
  }
  experiment_runs.write_results(os.path.dirname(os.path.abspath(__file__)), results)


if __name__ == "__main__":
  app.run(main)
