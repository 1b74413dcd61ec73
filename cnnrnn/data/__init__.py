"""Datasets (TF-free TFDS builders), Grain pipelines, preprocessing, synthetic tasks."""

from cnnrnn.data.image import ImagePreprocess
from cnnrnn.data.pipeline import eval_batches, train_dataset
from cnnrnn.data.sources import Dataset, load, prepare


def image_preprocess(dataset_config, dataset: Dataset, *, train: bool) -> ImagePreprocess:
  """The image preprocessing named by a `config.dataset` block, for `dataset`."""
  return ImagePreprocess(
      mean=dataset.mean,
      std=dataset.std,
      pad_to=dataset_config.get("pad_to"),
      augment=dataset_config.get("augment", "none") if train else "none",
  )
