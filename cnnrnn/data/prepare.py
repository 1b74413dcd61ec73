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

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, on absl's global FLAGS: defined when run as a program, not
  on import (other cnnrnn programs define flags of the same names, and one process may
  import several)."""
  flags.DEFINE_enum("dataset", None, sorted(builders.BUILDERS), "Dataset to prepare.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS_DATA_DIR or ~/tensorflow_datasets).")
  flags.DEFINE_string("manual_dir", None, "Folder with the original files (offline); else download.")
  flags.mark_flag_as_required("dataset")


def main(argv):
  del argv
  try:
    builder = sources.prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  splits = ", ".join(f"{name}: {split.num_examples:,}" for name, split in builder.info.splits.items())
  print(f"{FLAGS.dataset} ready in {builder.data_dir} ({splits})")


if __name__ == "__main__":
  define_flags()
  app.run(main)
