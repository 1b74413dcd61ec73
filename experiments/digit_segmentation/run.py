"""Digit-scene segmentation: the segmenter (CIFAR ResNet-20 backbone, FCN decoder) from scratch
against the same model whose backbone was first trained to classify MNIST digits, at a
reduced budget (configs/digit_segmentation.py).

  python experiments/digit_segmentation/run.py --root=workdirs/segmentation
  python -m cnnrnn.report --experiments=digit_segmentation

Runs, in order: `pretrain` (the MNIST classifier), `scratch`, `transfer`
(--config.transfer.source=<the pretrain workdir>). The scene size, digit count and steps
below are the reduced budget of the committed results. Writes results.json beside this file.
"""

import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ROOT = flags.DEFINE_string("root", "workdirs/segmentation", "Folder for the runs' workdirs.")
_MNIST = flags.DEFINE_string("mnist", "../shared/datasets/mnist", "MNIST's IDX files.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 200, "Classifier training steps.")
_STEPS = flags.DEFINE_integer("steps", 150, "Segmenter training steps.")
SCENE = ["--config.dataset.size=40", "--config.dataset.num_digits=2",
         "--config.dataset.num_train=3200", "--config.dataset.num_test=400",
         "--config.batch_size=16"]


def cpu_model() -> str:
  """The CPU's model name and widest vector ISA (Linux), else the platform's machine type."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = f.read()
  except OSError:
    return platform.machine()
  names = [l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")]
  isa = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
  return f"{names[0] if names else platform.machine()} ({isa})"


def final_test(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r.get("split") == "test"][-1]


def run(arg: str, workdir: str, *flags_) -> tuple[dict, float]:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "cnnrnn.main",
                  f"--config=configs/digit_segmentation.py:{arg}", f"--workdir={workdir}",
                  f"--config.dataset.data_dir={os.path.join(_ROOT.value, 'tfds')}",
                  f"--config.dataset.manual_dir={_MNIST.value}", "--config.progress_bar=False",
                  *flags_], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return final_test(workdir), time.perf_counter() - start


def main(argv):
  del argv
  pretrain = os.path.join(_ROOT.value, "pretrain")
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
      "hardware": f"{cpu_model()}, 2 cores shared with other jobs",
      "wall_time": "a few minutes per run",
      "rows": rows,
      "summary": {"rows": ["scratch", "transfer"], "note": f"test mIoU after {_STEPS.value} steps",
                  "numeric_paper": False},
  }
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"), "w",
            encoding="utf-8") as f:
    json.dump(results, f, indent=1)
    f.write("\n")


if __name__ == "__main__":
  app.run(main)
