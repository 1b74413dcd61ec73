"""The Multi30k builder reads the real files (../shared/datasets/multi30k)."""

import hashlib
import os

import pytest

from cnnrnn import data
from cnnrnn.data.builders import multi30k
from tests.helpers import shared_dataset


@pytest.mark.slow
def test_multi30k_builder_reads_the_real_files(data_dir):
  ds = data.load("multi30k", data_dir, shared_dataset("multi30k"))
  assert {k: len(v) for k, v in ds.splits.items()} == {
      "train": 29_000, "validation": 1_014, "test": 1_000}
  assert not ds.is_image and ds.num_classes is None
  first = {k: v.decode() for k, v in ds.split("train")[0].items()}
  assert first == {"en": "Two young, White males are outside near many bushes.",
                   "de": "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
                   "fr": "Deux jeunes hommes blancs sont dehors près de buissons."}
  assert ds.split("test")[0]["en"].decode() == "A man in an orange hat starring at something."
  assert ds.split("validation")[0]["de"].decode() == (
      "Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen")
  # Raw lines: the files' own whitespace is kept (40 German training lines end in a space).
  assert sum(ds.split("train")[i]["de"].decode().endswith(" ") for i in range(29_000)) == 40


@pytest.mark.parametrize("name", multi30k.Multi30k.FILES)
def test_checksums_describe_the_published_files(name):
  path = os.path.join(shared_dataset("multi30k"), name)
  with open(path, "rb") as f:
    payload = f.read()
  assert multi30k.Multi30k.CHECKSUMS[name] == (len(payload), hashlib.sha256(payload).hexdigest())


def test_misaligned_files_are_refused(tmp_path, monkeypatch):
  import gzip  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(multi30k.Multi30k, "CHECKSUMS", {})  # Not the published files.
  for stem in multi30k.SPLIT_STEMS.values():
    for lang in multi30k.LANGUAGES:
      with gzip.open(tmp_path / f"{stem}.{lang}.gz", "wt") as f:
        f.write("a\nb\n" if lang != "fr" else "a\n")
  with pytest.raises(ValueError, match="not aligned"):
    data.load("multi30k", str(tmp_path / "tfds"), str(tmp_path))
