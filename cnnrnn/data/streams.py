"""The trainer's data: a training stream and evaluation passes for any dataset.

Examples datasets (images, synthetic sequences) give shuffled batches of examples
(`pipeline.train_dataset` / `pipeline.eval_batches`); text datasets trained as language
models give truncated-BPTT windows over contiguous streams (`text.training_stream` over
`text.LanguageModelBatches` / `text.lm_eval_batches`), with a vocabulary built from the
training split; translation datasets (a `config.dataset` with `source_lang`) give
bucketed batches of sentence pairs (`translation.TrainBatches` / `translation.eval_batches`)
with tokenisers trained on the training split.
"""

from collections.abc import Callable, Iterable
import dataclasses

import grain

from cnnrnn.data import builders
from cnnrnn.data import options
from cnnrnn.data import pipeline
from cnnrnn.data import sources
from cnnrnn.data import subsets
from cnnrnn.data import synthetic
from cnnrnn.data import text
from cnnrnn.data import translation
from cnnrnn.data.image import ImagePreprocess
from cnnrnn.data.options import Option
from cnnrnn.data.sources import Dataset

# `config.dataset` fields read here: the language models' truncated-BPTT window and token
# level, the translation batches' bucketing.
CONFIG_OPTIONS = {"seq_len": Option(int, minimum=1), "level": Option(str, choices=("word", "char")),
                  "bucket_width": Option(int, minimum=1), "bucket_pool": Option(int, minimum=1)}


def config_options() -> dict[str, Option]:
  """Every declared `config.dataset` option (see `cnnrnn.data.options`), by name."""
  return options.merge(CONFIG_OPTIONS, sources.CONFIG_OPTIONS, translation.CONFIG_OPTIONS,
                       synthetic.config_options(),
                       *(cls.config_options() for cls in builders.BUILDERS.values()))


@dataclasses.dataclass(frozen=True)
class Streams:
  """Attributes:
    train: the endless training stream of this process's batches (checkpointable).
    eval_batches: split name -> one pass over that split, every example once (`mask`).
    steps_per_epoch: training batches per pass over the training split.
    model_defaults: model fields the data determines (`num_classes` or `vocab_size`).
    vocab: the vocabulary of a text dataset, else None.
    pairs: a translation dataset's tokenisers and sentences (for BLEU), else None.
  """

  train: grain.IterDataset
  eval_batches: Callable[[str], Iterable[dict]]
  steps_per_epoch: int
  model_defaults: dict
  vocab: text.Vocabulary | None = None
  pairs: translation.TranslationData | None = None


def _as_is(batch: dict, rng=None) -> dict:
  del rng
  return batch


def preprocessor(dataset_config, dataset: Dataset, *, train: bool):
  """The batch preprocessing named by a `config.dataset` block, for `dataset`: image
  normalisation/padding/augmentation for image datasets, none for the others."""
  if not dataset.is_image:
    return _as_is
  return ImagePreprocess(
      mean=dataset.mean,
      std=dataset.std,
      pad_to=dataset_config.get("pad_to"),
      augment=dataset_config.get("augment", "none") if train else "none",
      image_size=dataset_config.get("image_size"),
      crop_fraction=dataset_config.get("crop_fraction", 0.875),
  )


def make_streams(dataset_config, dataset: Dataset, *, batch_size: int, eval_batch_size: int,
                 seed: int, language_model: bool = False, process_index: int = 0,
                 process_count: int = 1) -> Streams:
  """Builds the streams a `config.dataset` block asks for.

  Args:
    dataset_config: `config.dataset` (train_split, cache, read_threads; for language
      models seq_len, the truncated-BPTT window, and optionally level).
    dataset: the opened dataset.
    batch_size, eval_batch_size: global batch sizes (streams, for language models).
    seed: shuffling seed (examples datasets).
    language_model: read a text dataset as token streams.
    process_index, process_count: this process's share of every batch.

  Raises:
    ValueError: a language model on a dataset without text, or a bad seq_len.
  """
  cache = dataset_config.get("cache", "auto")
  train_split = dataset_config.get("train_split", "train")
  shard = dict(process_index=process_index, process_count=process_count)
  if language_model:
    seq_len = dataset_config.get("seq_len")
    if not isinstance(seq_len, int) or seq_len < 1:
      raise ValueError(f"dataset.seq_len={seq_len!r}; a language model needs the truncated-BPTT "
                       "window: a positive integer")
    if dataset.is_image:
      raise ValueError(f"task.name='language_model' needs a text dataset; {dataset.name!r} is images")
    corpus = text.load_corpus(dataset, dataset_config.get("level"), train_split)
    batches = text.LanguageModelBatches(corpus.split(train_split), global_batch_size=batch_size,
                                        seq_len=seq_len, train=True, **shard)
    eval_passes = {}

    def lm_eval(split):
      if split not in eval_passes:  # Built once per split; every pass reads the same windows.
        eval_passes[split] = text.lm_eval_batches(
            corpus.split(split), global_batch_size=eval_batch_size, seq_len=seq_len, **shard)
      return eval_passes[split]

    return Streams(text.training_stream(batches), lm_eval, len(batches),
                   {"vocab_size": len(corpus.vocab)}, corpus.vocab)

  if dataset_config.get("source_lang") is not None:
    return _translation_streams(dataset_config, dataset, batch_size=batch_size,
                                eval_batch_size=eval_batch_size, seed=seed, **shard)

  classes = tuple(dataset_config.get("classes") or ())
  if not classes and dataset_config.get("examples_per_class") and dataset.num_classes:
    classes = tuple(range(dataset.num_classes))  # N per class of every class
  subset = lambda source, n=0: source if not classes else subsets.class_subset(
      source, classes, n, dataset_config.get("subset_seed", 0))
  train_source = subset(dataset.open_split(train_split, cache),
                        dataset_config.get("examples_per_class", 0))
  sources = {}

  def eval_batches(split):
    if split not in sources:
      sources[split] = subset(dataset.open_split(split, cache))
    return pipeline.eval_batches(sources[split], global_batch_size=eval_batch_size,
                                 preprocess=preprocessor(dataset_config, dataset, train=False),
                                 **shard)

  train = pipeline.train_dataset(
      train_source, global_batch_size=batch_size, seed=seed,
      preprocess=preprocessor(dataset_config, dataset, train=True),
      read_threads=dataset_config.get("read_threads", 2), **shard)
  num_classes = len(classes) if classes else dataset.num_classes
  defaults = {"num_classes": num_classes} if num_classes else {}
  return Streams(train, eval_batches, len(train_source) // batch_size, defaults)


def _translation_streams(dataset_config, dataset: Dataset, *, batch_size: int,
                         eval_batch_size: int, seed: int, process_index: int,
                         process_count: int) -> Streams:
  """Sentence pairs (fields of `translation.load_pairs`, plus bucket_width, bucket_pool)."""
  if dataset.is_image:
    raise ValueError(f"dataset.source_lang is set but {dataset.name!r} is images")
  pairs = translation.load_pairs(dataset_config, dataset)
  shard = dict(process_index=process_index, process_count=process_count)
  width = dataset_config.get("bucket_width", 8)
  batches = translation.TrainBatches(
      pairs.split(dataset_config.get("train_split", "train")), global_batch_size=batch_size,
      seed=seed, max_length=pairs.max_length, bucket_width=width,
      bucket_pool=dataset_config.get("bucket_pool", 100), **shard)

  def eval_batches(split):
    return translation.eval_batches(pairs.split(split), global_batch_size=eval_batch_size,
                                    max_length=pairs.max_length, bucket_width=width, **shard)

  return Streams(translation.training_stream(batches, dataset_config.get("read_threads", 1)),
                 eval_batches, len(batches), pairs.model_defaults, pairs=pairs)
