"""Shared machinery of the TensorFlow-free TFDS builders.

Each builder parses the original download files itself and writes ArrayRecord, so neither
preparing nor reading a dataset imports TensorFlow. The files are taken from `manual_dir`
when it is given (offline machines), otherwise downloaded from their canonical URLs.
Images are stored as raw uint8 tensors rather than PNG: reading one back is then a parse
without a decode, about 3x faster (27 vs 71 us per MNIST example on this CPU), which
matters when one host core feeds the training step. Any other TFDS dataset prepared as
ArrayRecord (with encoded images) reads through the same pipeline.

Source files are verified before preparing, as TFDS's own checksums do: each file of
`CHECKSUMS` must have the recorded size and sha256 (a truncated download or another
dataset's file is refused, naming it). The prepared copy records the sha256 of the files
it was made from (`SOURCES_FILE`); opening it again with a `manual_dir` whose files differ
is refused instead of silently reusing a copy prepared from other files.
"""

import hashlib
import json
import os
import socket
import urllib.parse

from absl import logging
import tensorflow_datasets as tfds


class RawFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose inputs are a fixed set of original files.

  Subclasses set `FILES` (file names) and `URL` (the folder they download from) and
  implement `_split_generators` on top of `self._files(dl_manager)`.
  """

  FILES: tuple[str, ...] = ()
  URL: str = ""
  # File name -> (size in bytes, sha256) of the canonical originals, where known.
  CHECKSUMS: dict[str, tuple[int, str]] = {}
  # Per-channel mean and standard deviation of the training images, in [0, 1] units.
  MEAN: tuple[float, ...] = (0.5,)
  STD: tuple[float, ...] = (0.5,)
  _manual_dir_path: str | None = None

  @classmethod
  def builder_kwargs(cls, options: dict) -> dict:
    """Extra constructor arguments (e.g. a generated dataset's `config`) from the
    `config.dataset` fields; none for datasets that are the files as they are."""
    del options
    return {}

  @classmethod
  def config_options(cls) -> dict:
    """The `config.dataset` fields `builder_kwargs` reads: name -> `cnnrnn.data.options.Option`."""
    return {}

  @classmethod
  def missing_files_message(cls, manual_dir: str | None) -> str:
    where = manual_dir or "<a folder>"
    return (
        f"Dataset {cls.name!r} needs the files {', '.join(cls.FILES)} (from {cls.URL}). "
        f"Put them in {where} and pass it as --config.dataset.manual_dir={where}, or run "
        f"`python -m cnnrnn.data.prepare --dataset={cls.name} --manual_dir={where}` once."
    )

  def _files(self, dl_manager) -> dict[str, str]:
    """Maps each name in FILES to a local path: manual_dir first, else a download."""
    manual_dir = self._manual_dir_path
    if manual_dir:
      missing = [f for f in self.FILES if not os.path.exists(os.path.join(manual_dir, f))]
      if missing:
        raise FileNotFoundError(
            f"manual_dir {manual_dir} lacks {', '.join(missing)}. "
            + self.missing_files_message(manual_dir)
        )
      return self._verified({f: os.path.join(manual_dir, f) for f in self.FILES})
    host = urllib.parse.urlparse(self.URL).hostname
    try:  # Offline, fail now rather than after the download manager's minutes of retries.
      socket.getaddrinfo(host, 443)
    except OSError as e:
      raise FileNotFoundError(
          f"Could not download {self.name!r}: cannot resolve {host} ({e}). "
          + self.missing_files_message(None)
      ) from e
    try:
      paths = dl_manager.download({f: self.URL + f for f in self.FILES})
    except Exception as e:  # Offline, blocked host, ...: say what to do instead.
      raise FileNotFoundError(
          f"Could not download {self.name!r} ({e}). " + self.missing_files_message(None)
      ) from e
    return self._verified({f: os.fspath(p) for f, p in paths.items()})

  def _verified(self, paths: dict[str, str]) -> dict[str, str]:
    """Checks each file's size and sha256 against CHECKSUMS; records the digests used.

    Raises:
      ValueError: naming the file, what it is and what the original is.
    """
    self._source_digests = {}
    for name, path in paths.items():
      size = os.path.getsize(path)
      want = self.CHECKSUMS.get(name)
      if want and size != want[0]:
        raise ValueError(
            f"{path} has {size:,} bytes, but {name} of dataset {self.name!r} has {want[0]:,}: "
            f"a truncated or different file. " + self.missing_files_message(os.path.dirname(path)))
      digest = sha256(path)
      if want and digest != want[1]:
        raise ValueError(
            f"{path} has sha256 {digest}, not that of {name} of dataset {self.name!r} "
            f"({want[1]}): another dataset's file or a damaged copy. " + self.missing_files_message(
                os.path.dirname(path)))
      self._source_digests[name] = digest
    return paths

  def download_and_prepare_from(self, manual_dir: str | None = None) -> None:
    """Prepares the dataset from `manual_dir`, or by downloading when it is None.

    A copy prepared before is reused only if it was made from the same files.

    Raises:
      ValueError: a source file fails its check, or the prepared copy was made from files
        other than those in `manual_dir`.
    """
    self._manual_dir_path = manual_dir
    record = os.path.join(self.data_dir, SOURCES_FILE)
    if self.is_prepared():
      self._check_sources(manual_dir, record)
      return
    self._source_digests = {}
    self.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    with open(record, "w", encoding="utf-8") as f:
      json.dump({"files": self._source_digests}, f, indent=1, sort_keys=True)

  def _check_sources(self, manual_dir: str | None, record: str) -> None:
    """Compares the files a prepared copy was made from with the canonical or given ones."""
    if not self.FILES:
      return
    if not os.path.exists(record):
      logging.warning("%s was prepared without a record of its source files (%s): it cannot "
                      "be checked against them.", self.data_dir, SOURCES_FILE)
      return
    with open(record, encoding="utf-8") as f:
      used = json.load(f)["files"]
    expected = {n: c[1] for n, c in self.CHECKSUMS.items()}
    if manual_dir and all(os.path.exists(os.path.join(manual_dir, n)) for n in self.FILES):
      expected = {n: sha256(os.path.join(manual_dir, n)) for n in self.FILES}
    differ = sorted(n for n, d in expected.items() if used.get(n, d) != d)
    if differ:
      raise ValueError(
          f"The prepared {self.name!r} in {self.data_dir} was made from other files than "
          f"{'those in ' + manual_dir if manual_dir else 'the originals'} (sha256 differs for "
          f"{', '.join(differ)}). Delete {self.data_dir} to prepare it again from the right files.")


SOURCES_FILE = "cnnrnn_sources.json"


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
