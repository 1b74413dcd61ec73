"""The CIFAR transfer configs: classes, labels per class, strategies and their fields."""

import pytest

from cnnrnn import transfer
from cnnrnn.train import validate_config
from configs import cifar_transfer


@pytest.mark.parametrize("arg", ["pretrain", "pretrain,1200", "scratch,10", "scratch,0",
                                 "linear_probe,100", "full,1000", "discriminative,100",
                                 "progressive,10", "progressive,1000,400"])
def test_configs_validate(arg):
  c = cifar_transfer.get_config(arg)
  validate_config(c, num_devices=1)
  if c.transfer.source:
    transfer.validate(c.transfer)


def test_fields():
  pre = cifar_transfer.get_config("pretrain")
  assert (tuple(pre.dataset.classes), pre.model.num_classes, pre.num_train_steps) == (
      (0, 1, 2, 3, 4), 5, 20_000)
  probe = cifar_transfer.get_config("linear_probe,10")
  assert (tuple(probe.dataset.classes), probe.dataset.examples_per_class, probe.batch_size) == (
      (5, 6, 7, 8, 9), 10, 50)
  assert probe.transfer.strategy == "linear_probe"
  prog = cifar_transfer.get_config("progressive,100")
  assert tuple(prog.transfer.unfreeze_steps) == (600, 1200, 1800, 2400)
  assert not cifar_transfer.get_config("scratch,100").transfer.source
  with pytest.raises(ValueError, match=r"configs/cifar_transfer.py:probe,10; allowed: pretrain"):
    cifar_transfer.get_config("probe,10")


def test_steps_shrink_the_schedule_and_the_unfreezing():
  pre = cifar_transfer.get_config("pretrain,1200")
  assert (pre.num_train_steps, tuple(pre.optimizer.decay_boundaries)) == (1200, (600, 900))
  prog = cifar_transfer.get_config("progressive,100,300")
  assert (prog.num_train_steps, tuple(prog.transfer.unfreeze_steps),
          tuple(prog.optimizer.decay_boundaries)) == (300, (60, 120, 180, 240), (150, 225))
  assert cifar_transfer.get_config("scratch,0,500").num_train_steps == 500
  for bad in ("full,10,0", "full,10,x", "full,10,5,1", "pretrain,1,2"):
    with pytest.raises(ValueError, match="configs/cifar_transfer.py"):
      cifar_transfer.get_config(bad)
