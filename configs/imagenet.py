"""What the ImageNet configs share: the dataset, its preprocessing, and the step-decay
SGD recipe the classic papers use.

ImageNet (ILSVRC-2012) cannot be downloaded automatically; prepare TFDS's imagenet2012
as ArrayRecord (TFDS's own builder, from the manually downloaded tars) into `data_dir`.
It then reads like every other dataset, without TensorFlow: training images get
random-resized crops to 224 and flips, evaluation images are resized to 256 and
center-cropped to 224, both normalised with ImageNet's channel statistics.
"""

from collections.abc import Sequence

import ml_collections

from cnnrnn.train import default_config

TRAIN_IMAGES = 1_281_167
VALIDATION_IMAGES = 50_000


def steps_per_epoch(batch_size: int) -> int:
  return TRAIN_IMAGES // batch_size


def dataset(config: ml_collections.ConfigDict) -> None:
  """Sets `config.dataset` to imagenet2012 with ImageNet-style preprocessing."""
  config.dataset.name = "imagenet2012"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.test_split = "validation"
  config.dataset.augment = "random_resized_crop"
  config.dataset.image_size = 224
  config.dataset.crop_fraction = 0.875  # Shorter side 256, center 224.
  config.dataset.read_threads = 16
  config.model.num_classes = 1000


def config(model: str, *, batch_size: int, learning_rate: float, weight_decay: float,
           epochs: int, decay_epochs: Sequence[int]) -> ml_collections.ConfigDict:
  """SGD with momentum 0.9, the learning rate divided by 10 at `decay_epochs`; an
  evaluation every epoch; the best checkpoint (by validation accuracy) kept."""
  c = default_config()
  c.model.name = model
  dataset(c)
  c.batch_size = batch_size
  c.eval_batch_size = 500
  per_epoch = steps_per_epoch(batch_size)
  c.num_train_steps = epochs * per_epoch
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = weight_decay
  c.optimizer.schedule = "step"
  c.optimizer.decay_boundaries = tuple(e * per_epoch for e in decay_epochs)
  c.optimizer.decay_factor = 0.1
  c.log_every_steps = 100
  c.eval_every_steps = per_epoch
  c.checkpoint_every_steps = 1000
  c.checkpoint.keep_best = True
  return c
