"""Datasets (TF-free TFDS builders), Grain pipelines, preprocessing, synthetic tasks."""

from cnnrnn.data.image import ImagePreprocess
from cnnrnn.data.pipeline import eval_batches, train_dataset
from cnnrnn.data.sources import Dataset, load, prepare


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
  )
