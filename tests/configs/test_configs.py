"""Every experiment config builds, passes validation, and says what its paper says."""

import importlib

import numpy as np
import pytest

from cnnrnn import data
from cnnrnn import models
from cnnrnn.data import pipeline
from cnnrnn.train import optim
from cnnrnn.train import validate_config
from configs import imagenet

CONFIGS = [
    ("quickstart", None), ("lenet5_mnist", None), ("cifar_resnet", "20"),
    ("cifar_resnet", "110"), ("cifar_resnet", "56,6000"), ("adding_problem", "lstm,100"),
    ("char_rnn_shakespeare", None), ("ptb_lstm", "small"), ("ptb_lstm", "medium"),
    ("ptb_lstm", "large"), ("resnet50_imagenet", None), ("vgg16_imagenet", None),
    ("alexnet_imagenet", None), ("multi30k_transformer", "small"),
    ("multi30k_transformer", "tiny"), ("multi30k_transformer", "small,sentencepiece"),
    ("multi30k_transformer", "small,spacy_words"),
    ("moving_mnist_video", "single_frame"),
    ("moving_mnist_video", "lstm,direction"), ("moving_mnist_video", "bilstm,identity"),
    ("mnist_captions", "attention"), ("mnist_captions", "no_attention"),
    *[("multi30k_seq2seq", v) for v in ("ptseq2seq_lstm", "ptseq2seq_gru_context",
                                        "ptseq2seq_bahdanau", "luong")],
]


def _config(name, arg):
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(arg) if arg is not None else module.get_config()


@pytest.mark.parametrize("name,arg", CONFIGS)
def test_config_validates(name, arg):
  c = _config(name, arg)
  validate_config(c, num_devices=1)
  models.get_constructor(c.model.name)


def test_cifar_resnet_schedule_shrinks_with_the_steps():
  full = _config("cifar_resnet", "20")
  assert (full.num_train_steps, tuple(full.optimizer.decay_boundaries)) == (64_000, (32_000, 48_000))
  short = _config("cifar_resnet", "20,6000")
  assert (short.num_train_steps, tuple(short.optimizer.decay_boundaries)) == (6000, (3000, 4500))
  schedule = optim.make_schedule(short.optimizer, short.num_train_steps)
  np.testing.assert_allclose([schedule(2999), schedule(3000), schedule(4500)], [0.1, 0.01, 0.001],
                             rtol=1e-6)
  for bad in ("21", "20,0", "20,x", "x"):
    with pytest.raises(ValueError, match="configs/cifar_resnet.py"):
      _config("cifar_resnet", bad)


@pytest.mark.parametrize("name,model,batch,decay,lr", [
    ("resnet50_imagenet", "resnet50", 256, 1e-4, 0.1),
    ("vgg16_imagenet", "vgg16", 256, 5e-4, 0.01),
    ("alexnet_imagenet", "alexnet", 128, 5e-4, 0.01),
])
def test_imagenet_configs(name, model, batch, decay, lr):
  c = _config(name, None)
  assert (c.model.name, c.batch_size, c.optimizer.weight_decay, c.optimizer.learning_rate) == (
      model, batch, decay, lr)
  per_epoch = imagenet.TRAIN_IMAGES // batch
  assert tuple(c.optimizer.decay_boundaries) == (30 * per_epoch, 60 * per_epoch)
  # The dataset block gives random-resized 224 crops in training, 256 -> 224 in evaluation.
  ds = data.Dataset("imagenet2012", {}, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  rng = np.random.default_rng(0)
  images = pipeline.read_batch(
      [{"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "label": 3}
       for h, w in [(300, 400), (500, 280)]], range(2))
  for train in (True, False):
    out = data.preprocessor(c.dataset, ds, train=train)(images, rng)
    assert out["image"].shape == (2, 224, 224, 3) and out["image"].dtype == np.float32


@pytest.mark.parametrize("name,arg,match", [
    ("moving_mnist_video", "gru", "variant 'gru'; allowed: single_frame, lstm, bilstm"),
    ("moving_mnist_video", "lstm,colour", "label 'colour'; allowed: identity, direction"),
    ("mnist_captions", "hard", "allowed: attention, no_attention"),
])
def test_hybrid_configs_name_bad_variants(name, arg, match):
  with pytest.raises(ValueError, match=match):
    _config(name, arg)


def test_hybrid_configs_build_their_models():
  for arg in ("single_frame", "lstm,direction", "bilstm"):
    c = _config("moving_mnist_video", arg)
    assert c.task.label_key == c.dataset.label_key
    models.create(c.model.name, num_classes=4, **{k: v for k, v in c.model.to_dict().items()
                                                  if k != "name"})
  c = _config("mnist_captions", "no_attention")
  assert not c.model.attention and c.task.attention_penalty == 0 and c.model.vocab_size == 26
