"""Prepare a dataset once (download or manual_dir -> ArrayRecord), without TensorFlow.

  python -m cnnrnn.data.prepare --dataset=mnist --manual_dir=../shared/datasets/mnist \
      [--data_dir=~/tensorflow_datasets]

Training prepares datasets on first use too; this is for doing it ahead of time (e.g. once
on a shared filesystem before a multi-host run).
"""

import sys

from absl import app
from absl import flags

from cnnrnn.data import builders
from cnnrnn.data import sources

_DATASET = flags.DEFINE_enum("dataset", None, sorted(builders.BUILDERS), "Dataset to prepare.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS_DATA_DIR or ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the original files (offline); else download.")
flags.mark_flag_as_required("dataset")


def main(argv):
  del argv
  try:
    builder = sources.prepare(_DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  splits = ", ".join(f"{name}: {split.num_examples:,}" for name, split in builder.info.splits.items())
  print(f"{_DATASET.value} ready in {builder.data_dir} ({splits})")


if __name__ == "__main__":
  app.run(main)
