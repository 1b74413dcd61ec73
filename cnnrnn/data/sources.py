"""Finding, preparing and opening TFDS datasets (ArrayRecord) without TensorFlow."""

import dataclasses
import difflib
import os
from typing import Any

import jax
import tensorflow_datasets as tfds

from cnnrnn.data import builders
from cnnrnn.data import synthetic
from cnnrnn.data.options import Option
from cnnrnn.data.pipeline import InMemory

# `config.dataset` fields read here (cnnrnn.data.options): which class feature of a
# builder's dataset sets num_classes.
CONFIG_OPTIONS = {"label_key": Option(str)}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An opened dataset: random-access sources per split plus what the pipeline needs."""

  name: str
  splits: dict[str, Any]  # split name -> random-access source (len, __getitem__)
  num_classes: int | None
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)
  is_image: bool = True

  def split(self, name: str):
    if name not in self.splits:
      raise ValueError(
          f"Dataset {self.name!r} has no split {name!r}; its splits: {sorted(self.splits)}"
      )
    return self.splits[name]

  def split_bytes(self, name: str) -> int | None:
    """Size of split `name` on disk, from its TFDS metadata (None if unknown)."""
    info = getattr(self.split(name), "dataset_info", None)
    try:
      return int(info.splits[name].num_bytes)
    except (AttributeError, KeyError, TypeError):
      return None

  def open_split(self, name: str, cache: bool | str = "auto"):
    """Split `name` as a random-access source, read into memory when `cache` says so.

    Args:
      name: split name.
      cache: True (read the whole split into numpy arrays once: batches then cost
        ~0.2 ms instead of ~7 ms on 2 cores for MNIST), False (read from ArrayRecord
        every time), or "auto" (cache splits under 1 GiB on disk).

    Raises:
      ValueError: an unknown split or cache value.
    """
    if cache not in (True, False, "auto"):
      raise ValueError(f"dataset.cache={cache!r}; allowed: True, False, 'auto'")
    source = self.split(name)
    if cache == "auto":
      size = self.split_bytes(name)
      cache = size is not None and size < 2**30
    return InMemory(source) if cache else source


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _feature(info, key: str):
  try:
    return info.features[key]
  except (KeyError, TypeError):
    return None


def _num_classes(info, label_key: str = "label") -> int | None:
  return getattr(_feature(info, label_key), "num_classes", None)


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None,
            options: dict | None = None):
  """Prepares one of cnnrnn's own datasets (idempotent) and returns its builder.

  `options` (the `config.dataset` fields) configure generated datasets (sizes, shapes).

  Raises:
    ValueError: `name` is not one of cnnrnn's builders.
    FileNotFoundError: the original files are neither in `manual_dir` nor downloadable;
      the message names the files and where to put them.
  """
  if name not in builders.BUILDERS:
    raise ValueError(
        f"dataset.name={name!r} has no cnnrnn builder; known: {', '.join(sorted(builders.BUILDERS))}"
    )
  cls = builders.BUILDERS[name]
  builder = cls(data_dir=data_dir or default_data_dir(), file_format="array_record",
                **cls.builder_kwargs(options or {}))
  builder.download_and_prepare_from(manual_dir)
  return builder


def load(name: str, data_dir: str | None = None, manual_dir: str | None = None,
         options: dict | None = None) -> Dataset:
  """Opens dataset `name`, preparing it first when it is one of cnnrnn's own.

  Preparation runs on process 0 only; the other processes wait for it. Datasets that are
  not cnnrnn's own (e.g. imagenet2012) must already be prepared as ArrayRecord in
  `data_dir` (by TFDS or otherwise) and are opened with `tfds.data_source`. Synthetic
  tasks (`synthetic.TASKS`) are generated in memory from `options` (the `config.dataset`
  fields, e.g. seq_len, num_train, num_test, seed).
  """
  if name in synthetic.TASKS:
    return synthetic_dataset(name, options or {})
  data_dir = data_dir or default_data_dir()
  if name in builders.BUILDERS:
    cls = builders.BUILDERS[name]
    if jax.process_index() == 0:
      builder = prepare(name, data_dir, manual_dir, options)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices(f"prepare {name}")
    if jax.process_index() != 0:
      builder = cls(data_dir=data_dir, file_format="array_record",
                    **cls.builder_kwargs(options or {}))
    splits = {s: builder.as_data_source(split=s) for s in builder.info.splits}
    # `dataset.label_key` picks which class feature sets num_classes (moving_mnist: label or
    # direction).
    label_key = (options or {}).get("label_key") or "label"
    return Dataset(name, splits, _num_classes(builder.info, label_key), cls.MEAN, cls.STD,
                   is_image=_feature(builder.info, "image") is not None)
  try:
    sources = tfds.data_source(name, data_dir=data_dir)
  except Exception as e:
    # TFDS's message goes on to list its whole catalogue (~260 lines): keep its first line.
    first = (str(e).strip().splitlines() or [""])[0]
    close = difflib.get_close_matches(name, [*builders.BUILDERS, *synthetic.TASKS], n=2)
    raise ValueError(
        f"dataset.name={name!r} is neither a cnnrnn builder ({', '.join(sorted(builders.BUILDERS))}), "
        f"a synthetic task ({', '.join(sorted(synthetic.TASKS))}) "
        f"nor a TFDS dataset prepared as ArrayRecord in {data_dir} ({type(e).__name__}: {first})"
        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
    ) from e
  info = next(iter(sources.values())).dataset_info
  image = _feature(info, "image")
  channels = image.shape[-1] if image is not None and image.shape else 3
  # ImageNet statistics for RGB datasets without their own; 0.5 otherwise.
  mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if channels == 3 else ((0.5,), (0.5,))
  return Dataset(name, dict(sources), _num_classes(info), mean, std, is_image=image is not None)


def synthetic_dataset(name: str, options: dict) -> Dataset:
  """A synthetic task as a Dataset: "train" and "test" splits generated from two seeds.

  Options (from `config.dataset`): num_train (default 100,000), num_test (10,000), seed
  (0; the test split uses seed + 1), and the generator's own arguments (e.g. seq_len).
  """
  generate, arg_names, num_classes = synthetic.TASKS[name]
  args = {k: options[k] for k in arg_names if options.get(k) is not None}
  seed = int(options.get("seed") or 0)
  splits = {
      "train": InMemory.from_arrays(generate(int(options.get("num_train") or 100_000), seed=seed, **args)),
      "test": InMemory.from_arrays(generate(int(options.get("num_test") or 10_000), seed=seed + 1, **args)),
  }
  return Dataset(name, splits, num_classes, is_image=False)
