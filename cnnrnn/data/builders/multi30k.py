"""Multi30k (Elliott et al. 2016), task 1, from the dataset's raw files (no TensorFlow).

Image-caption translations, one sentence per line, aligned across English, German and
French: 29,000 train / 1,014 validation / 1,000 test (test2016, Flickr) sentences. Each
example holds the raw text of all three languages (the line without its line break, not
tokenised, not lowercased); a language pair and the tokenisation are chosen at reading time
(`cnnrnn.data.translation`), so neither needs a re-preparation.
"""

import gzip

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import base

LANGUAGES = ("en", "de", "fr")
# Split name -> the file stem of the dataset's `data/task1/raw/` folder.
SPLIT_STEMS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}


class Multi30k(base.RawFilesBuilder, skip_registration=True):
  """Multi30k task 1 (en, de, fr): 29,000 / 1,014 / 1,000 aligned sentences."""

  name = "multi30k"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Task 1 raw text (train, val, test_2016_flickr) in en, de, fr."}
  FILES = tuple(f"{stem}.{lang}.gz" for stem in SPLIT_STEMS.values() for lang in LANGUAGES)
  URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
  # (size in bytes, sha256) of each file as published in the repository above.
  CHECKSUMS = {
      "train.en.gz": (568929, "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f"),
      "train.de.gz": (637044, "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6"),
      "train.fr.gz": (604242, "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c"),
      "val.en.gz": (21650, "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28"),
      "val.de.gz": (24681, "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a"),
      "val.fr.gz": (23001, "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9"),
      "test_2016_flickr.en.gz": (
          21077, "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9"),
      "test_2016_flickr.de.gz": (
          22890, "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8"),
      "test_2016_flickr.fr.gz": (
          22310, "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90"),
  }

  def _info(self):
    # String Tensors rather than tfds.features.Text, whose encoder needs TensorFlow.
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {lang: tfds.features.Tensor(shape=(), dtype=np.str_) for lang in LANGUAGES}),
        homepage="https://github.com/multi30k/dataset",
        disable_shuffling=True,  # Keep the files' order: line i of every file is example i.
    )

  def _split_generators(self, dl_manager):
    files = self._files(dl_manager)
    return {split: self._generate_examples({lang: files[f"{stem}.{lang}.gz"] for lang in LANGUAGES})
            for split, stem in SPLIT_STEMS.items()}

  def _generate_examples(self, paths: dict[str, str]):
    lines = {lang: read_lines(path) for lang, path in paths.items()}
    counts = {lang: len(v) for lang, v in lines.items()}
    if len(set(counts.values())) != 1:
      raise ValueError(f"Multi30k files are not aligned: line counts {counts} ({paths})")
    for i, texts in enumerate(zip(*lines.values())):
      yield i, dict(zip(lines, texts))


def read_lines(path: str) -> list[str]:
  """The lines of a gzipped UTF-8 file, without their line breaks (nothing else removed)."""
  with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
    text = f.read()
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()  # The file's final line break ends the last line; it starts no new one.
  return lines
