"""The ViT-vs-ResNet-20 configs: models, data fractions, schedules, bad arguments."""

import jax
import jax.numpy as jnp
import pytest

from cnnrnn import models
from cnnrnn.train import validate_config
from configs import cifar_vit_vs_cnn


@pytest.mark.parametrize("arg", ["vit,10,360", "vit,100,1000", "resnet20,10,700",
                                 "resnet20,100,700"])
def test_configs_validate(arg):
  validate_config(cifar_vit_vs_cnn.get_config(arg), num_devices=1)


def test_fields():
  vit = cifar_vit_vs_cnn.get_config("vit,10,400")
  assert (vit.dataset.examples_per_class, vit.num_train_steps, vit.optimizer.warmup_steps,
          vit.optimizer.name, vit.batch_size) == (500, 400, 20, "adamw", 128)
  resnet = cifar_vit_vs_cnn.get_config("resnet20,100,700")
  assert (resnet.model.name, resnet.dataset.examples_per_class,
          tuple(resnet.optimizer.decay_boundaries)) == ("cifar_resnet20", 0, (350, 525))
  for bad in ("vit,0,10", "vit,101,10", "vit,10,0", "vgg,10,10", "vit,10"):
    with pytest.raises(ValueError, match="configs/cifar_vit_vs_cnn.py"):
      cifar_vit_vs_cnn.get_config(bad)


def test_vit_size():
  model = cifar_vit_vs_cnn.get_config("vit,100,10").model
  kwargs = {k: v for k, v in model.items() if k not in ("name", "dtype")}
  module = models.create(model.name, **kwargs)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  # Patch embedding 6,272 + class token 128 + 65 positions 8,320 + 6 blocks of 132,480
  # + final LayerNorm 256 + head 1,290.
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 811_146
