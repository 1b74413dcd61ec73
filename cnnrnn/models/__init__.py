"""Architectures and the one registry: `create(name, **kwargs)` and `names()`.

The registry is a plain table filled here, not by import side effects. Each entry maps a
public name to a constructor (a Module class or a `functools.partial` of one that fixes the
variant's data: stage sizes, widths, block type).
"""

from collections.abc import Callable

import flax.linen as nn

from cnnrnn.models.captioner import Captioner
from cnnrnn.models.conv_stack import ConvStack
from cnnrnn.models.lenet import LeNet5
from cnnrnn.models.rnn_classifier import RNNClassifier
from cnnrnn.models.rnn_lm import RNNLM
from cnnrnn.models.alexnet import AlexNet
from cnnrnn.models.resnet import CIFAR_DEPTHS, IMAGENET_STAGES, ResNet, cifar_resnet, resnet
from cnnrnn.models.seq2seq import Seq2Seq, seq2seq
from cnnrnn.models.segmentation import Segmenter
from cnnrnn.models.time_series import FCN, LSTMFCN, ResNet1D
from cnnrnn.models.transformer import Transformer, transformer
from cnnrnn.models.video_classifier import VideoClassifier
from cnnrnn.models.vgg import VGG, VGG_STAGES, vgg
from cnnrnn.models.vit import REGISTRY_VARIANTS as VIT_VARIANTS, ViT, vit_variant

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "conv_stack": ConvStack,
    "rnn_lm": RNNLM,
    "rnn_classifier": RNNClassifier,
    "alexnet": AlexNet,
    **{f"vgg{d}": vgg(d) for d in VGG_STAGES},
    **{f"vgg{d}_bn": vgg(d, batch_norm=True) for d in VGG_STAGES},
    **{f"resnet{d}": resnet(d) for d in IMAGENET_STAGES},
    **{f"cifar_resnet{d}": cifar_resnet(d) for d in CIFAR_DEPTHS},
    "vit": ViT,  # any patch size / width / depth, e.g. patch 4 on 32x32 images
    **{name: vit_variant(variant) for name, variant in VIT_VARIANTS.items()},
    "transformer": transformer,
    "video_classifier": VideoClassifier,
    "captioner": Captioner,
    "seq2seq": seq2seq,
    # Time series (Wang et al. 2017; Karim et al. 2017) and per-pixel classification.
    "ts_fcn": FCN,
    "ts_resnet": ResNet1D,
    "lstm_fcn": LSTMFCN,
    "segmenter": Segmenter,
}


def names() -> list[str]:
  """All registered model names, sorted."""
  return sorted(_REGISTRY)


def get_constructor(name: str) -> Callable[..., nn.Module]:
  """The constructor registered under `name`; raises ValueError listing known names."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model name {name!r}; known models: {', '.join(names())}")
  return _REGISTRY[name]


def create(name: str, **kwargs) -> nn.Module:
  """Builds the model registered under `name` with its keyword arguments.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn import models
    >>> model = models.create("lenet5", num_classes=10)
    >>> images = jnp.zeros((4, 32, 32, 1))  # NHWC
    >>> variables = model.init(jax.random.key(0), images, train=False)
    >>> model.apply(variables, images, train=False).shape
    (4, 10)

  Args:
    name: a registry name, e.g. "lenet5", "resnet50", "rnn_lm".
    **kwargs: the model's attributes (num_classes, dtype, widths, ...).

  Returns:
    An unbound `flax.linen.Module`.

  Raises:
    ValueError: unknown name (the message lists the known ones) or unknown keyword.
  """
  ctor = get_constructor(name)
  try:
    return ctor(**kwargs)
  except TypeError as e:
    raise ValueError(f"model {name!r} got bad keyword arguments {sorted(kwargs)}: {e}") from e
