"""1-D convolutional networks for time series: the FCN and ResNet of Wang, Yan & Oates 2017
("Time Series Classification from Scratch with Deep Neural Networks: A Strong Baseline") and
the LSTM-FCN of Karim, Majumdar, Darabi & Chen 2017 ("LSTM Fully Convolutional Networks for
Time Series Classification").

Inputs are batch-major sequences [B, T, F]; every convolution is `cnnrnn.nn.Conv` over the
time axis (kernel (k,), stride 1, "SAME" padding so that the length is kept), followed by
BatchNorm and ReLU; global average pooling over time removes the dependence on T, so one
model reads any length. The head is a dense layer to `num_classes` logits (the softmax is
the task's).

Differences from the papers' Keras code, deliberate: the convolutions have no bias (each is
followed by BatchNorm, whose shift makes a bias redundant), and BatchNorm uses the
project's PyTorch-style constants (momentum 0.1, eps 1e-5) instead of Keras' (0.01, 1e-3).
Parameter counts (F = 1 input channel, K classes; the tests check them):
FCN 8*128 + 5*128*256 + 3*256*128 (convs) + 2*(128+256+128) (BatchNorm) + 129 K
= 264,192 + 129 K; ResNet 502,848 + 129 K; LSTM-FCN with 8 LSTM cells on a length-T series
(dimension shuffle) 264,192 + 4*8*(T + 8 + 1) + 137 K.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnrnn import nn as cnn

Array = jax.Array

FCN_WIDTHS = (128, 256, 128)
FCN_KERNELS = (8, 5, 3)
RESNET_WIDTHS = (64, 128, 128)


class ConvBNReLU1D(nn.Module):
  """Conv over time (no bias, "SAME") -> BatchNorm -> ReLU (unless `relu=False`).

  Attributes:
    features: output channels.
    kernel_size: taps along time.
    relu: apply the ReLU.
    dtype, param_dtype: compute and parameter dtypes.

  Submodules: `conv`, `bn`.
  """

  features: int
  kernel_size: int
  relu: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Args: x: [B, T, C]. Returns: [B, T, features]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = cnn.Conv(self.features, (self.kernel_size,), padding="SAME", use_bias=False,
                 kernel_init=cnn.he_normal_fan_out, name="conv", **kw)(x)
    x = cnn.BatchNorm(use_running_average=not train, momentum=cnn.BN_MOMENTUM,
                      epsilon=cnn.BN_EPSILON, name="bn", **kw)(x)
    return nn.relu(x) if self.relu else x


def _check_sequence(x: Array) -> None:
  if x.ndim != 3:
    raise ValueError(f"inputs must be [batch, time, features], got shape {x.shape}")


class ResidualBlock1D(nn.Module):
  """Three conv blocks (kernels 8, 5, 3; the last without ReLU) plus a shortcut, then ReLU.

  The shortcut is a 1x1 conv + BatchNorm when the channels change, else BatchNorm alone
  (as in the reference Keras implementation of Wang et al.'s ResNet).

  Attributes:
    features: channels of the three convolutions and of the output.
    kernel_sizes: the three kernel sizes.

  Submodules: `conv_block{0,1,2}`, `shortcut_conv` (when projecting), `shortcut_bn`.
  """

  features: int
  kernel_sizes: Sequence[int] = FCN_KERNELS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Args: x: [B, T, C]. Returns: [B, T, features]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = x
    last = len(self.kernel_sizes) - 1
    for i, k in enumerate(self.kernel_sizes):
      y = ConvBNReLU1D(self.features, k, relu=i < last, name=f"conv_block{i}", **kw)(y, train)
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = cnn.Conv(self.features, (1,), use_bias=False, kernel_init=cnn.he_normal_fan_out,
                          name="shortcut_conv", **kw)(x)
    shortcut = cnn.BatchNorm(use_running_average=not train, momentum=cnn.BN_MOMENTUM,
                             epsilon=cnn.BN_EPSILON, name="shortcut_bn", **kw)(shortcut)
    return nn.relu(y + shortcut)


class ConvNet1D(nn.Module):
  """Convolutions over time, global average pooling over time, dense head: the FCN and the
  ResNet of Wang et al. 2017 (`FCN`, `ResNet1D`) are this family with their own defaults.

  Attributes:
    num_classes: output size; 0 drops the head and returns the pooled features [B, C].
    widths: channels of each block.
    kernel_sizes: plain blocks: one kernel size per block; residual blocks: the kernel
      sizes of the convolutions inside every block.
    residual: `ResidualBlock1D`s instead of single `ConvBNReLU1D`s.
    dtype, param_dtype: compute and parameter dtypes.

  Submodules: `block{i}`, `head`.
  """

  num_classes: int
  widths: Sequence[int] = FCN_WIDTHS
  kernel_sizes: Sequence[int] = FCN_KERNELS
  residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Args: x: [B, T, F]. Returns: [B, num_classes] logits."""
    _check_sequence(x)
    if not self.residual and len(self.widths) != len(self.kernel_sizes):
      raise ValueError(f"model.widths {tuple(self.widths)} and model.kernel_sizes "
                       f"{tuple(self.kernel_sizes)} must have the same length")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    for i, w in enumerate(self.widths):
      if self.residual:
        x = ResidualBlock1D(w, tuple(self.kernel_sizes), name=f"block{i}", **kw)(x, train)
      else:
        x = ConvBNReLU1D(w, self.kernel_sizes[i], name=f"block{i}", **kw)(x, train)  # [B, T, w]
    x = x.mean(axis=1)  # global average pooling over time: [B, C]
    if self.num_classes == 0:
      return x
    return nn.Dense(self.num_classes, name="head", **kw)(x)


class FCN(ConvNet1D):
  """Fully convolutional network (Wang et al. 2017): three conv blocks (128, 256, 128
  channels; kernels 8, 5, 3), global average pooling over time, dense head (`ConvNet1D`).

  Submodules: `block{i}` (ConvBNReLU1D), `head`.
  """


class ResNet1D(ConvNet1D):
  """The time-series ResNet of Wang et al. 2017: three residual blocks of three convs each
  (64, 128, 128 channels; kernels 8, 5, 3), global average pooling over time, dense head
  (`ConvNet1D`).

  Submodules: `block{i}` (ResidualBlock1D), `head`.
  """

  widths: Sequence[int] = RESNET_WIDTHS
  residual: bool = True


class LSTMFCN(nn.Module):
  """LSTM-FCN (Karim et al. 2017): an LSTM branch and the FCN branch read the same series; their
  features are concatenated before the dense head.

  With `dimension_shuffle` (the paper's setting) the LSTM reads the series transposed,
  [B, F, T]: F steps of T features each (one step for a univariate series), so it sees the
  whole series at once; without it, T steps of F features. The LSTM's last hidden state
  goes through dropout (paper: 0.8) before the concatenation.

  Attributes:
    num_classes: output size.
    lstm_size: LSTM cells (paper: 8, 64 or 128, tuned per dataset).
    lstm_dropout: dropout rate on the LSTM features.
    dimension_shuffle: transpose time and features for the LSTM.
    widths, kernel_sizes: the FCN branch (as `FCN`).
    dtype, param_dtype: compute and parameter dtypes.

  Submodules: `lstm` (cnnrnn.nn.StackedRNN), `fcn` (FCN without head), `head`.
  """

  num_classes: int
  lstm_size: int = 8
  lstm_dropout: float = 0.8
  dimension_shuffle: bool = True
  widths: Sequence[int] = FCN_WIDTHS
  kernel_sizes: Sequence[int] = FCN_KERNELS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """Args: x: [B, T, F]. Returns: [B, num_classes] logits."""
    _check_sequence(x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    seq = jnp.swapaxes(x, 1, 2) if self.dimension_shuffle else x  # [B, F, T] or [B, T, F]
    lstm = cnn.StackedRNN(cell="lstm", hidden_size=self.lstm_size, num_layers=1, name="lstm",
                          **kw)
    h = lstm(seq, train)[:, -1]  # the last step's hidden state: [B, lstm_size]
    h = nn.Dropout(self.lstm_dropout, deterministic=not train)(h)
    conv = FCN(0, self.widths, self.kernel_sizes, name="fcn", **kw)(x, train)  # [B, C]
    features = jnp.concatenate([h, conv], axis=-1)
    return nn.Dense(self.num_classes, name="head", **kw)(features)
