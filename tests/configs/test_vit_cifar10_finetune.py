"""The ViT CIFAR-10 fine-tuning recipe: its settings, and a few steps of it on small stand-ins."""

import math

import pytest

from cnnrnn import train
from cnnrnn import transfer
from cnnrnn.train import validate_config
from configs import vit_cifar10_finetune
from tests.helpers import override


def test_the_recipe():
  c = vit_cifar10_finetune.get_config()
  validate_config(c, num_devices=8)
  transfer.validate(c.transfer)
  assert (c.model.name, c.model.image_size, c.batch_size, c.num_train_steps) == (
      "vit_b16", 224, 512, 10_000)
  assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.clip_norm, c.optimizer.schedule,
          c.optimizer.warmup_steps) == ("momentum", 0.9, 1.0, "cosine", 500)
  assert 0.01 <= c.optimizer.learning_rate <= 0.03
  assert c.transfer.source == "timm:vit_base_patch16_224.augreg_in21k"
  assert vit_cifar10_finetune.get_config("Ti/16,300").num_train_steps == 300
  with pytest.raises(ValueError, match=r"allowed variants: Ti/16, S/16, B/16, B/32, L/16"):
    vit_cifar10_finetune.get_config("X/16")


def _small(data_dir, **fields):
  """The recipe on the bundled 8x8 digits upscaled to 32x32, a 2-block ViT-Ti/16, 3 steps."""
  c = vit_cifar10_finetune.get_config("Ti/16,3")
  c.mesh = (("data", 1),)
  c.dataset.name = "digits"
  c.dataset.data_dir = data_dir
  c.dataset.image_size = 32
  c.model.image_size = 32
  c.model.depth = 2
  c.batch_size = c.eval_batch_size = 32
  c.progress_bar = False
  c.checkpoint.async_save = False
  c.log_every_steps = 1
  return override(c, **fields)


@pytest.mark.slow
def test_a_few_steps_from_random_weights(data_dir, tmp_path):
  metrics = train.train_and_evaluate(_small(data_dir, **{"transfer.source": ""}), str(tmp_path))
  assert math.isfinite(metrics["loss"]) and metrics["num_examples"] == 364
