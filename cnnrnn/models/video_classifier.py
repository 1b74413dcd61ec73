"""Clip classification with a CNN per frame and an RNN over time (LRCN, Donahue et al. 2015).

Every frame goes through the same image model of the zoo (any registry CNN created with
`num_classes=0`, which returns the features its head would read) in ONE batched call over
the B * T frames (a reshape, not a loop), the per-frame features [B, T, D] go through a
(bi)directional LSTM/GRU stack (`cnnrnn.nn.StackedRNN`), and a dense head classifies the
clip from the last state or from the mean over the valid steps. Without an RNN
(`cell=None`) the model is LRCN's single-frame baseline: the head classifies every frame on
its own and the clip's logits are the mean over its valid frames.

Clips of different lengths: `seq_lengths` [B] marks the first L_b frames of row b as valid.
Padding frames never change a valid output in inference mode (the RNN driver ignores steps
past the length, means are over valid steps only). In training mode a BatchNorm inside the
frame encoder computes its batch statistics over all B * T frames, padding included.

Pretrained frame encoder: `cnnrnn.transfer` loads a workdir of an image model into the
`encoder` submodule (`transfer.target_module="encoder"`, the source's head dropped), and
`freeze_encoder` keeps it fixed (inference mode, no gradient).
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnrnn.nn.cells import CELLS, make_cell
from cnnrnn.nn.rnn import StackedRNN

Array = jax.Array

READOUTS = ("last", "mean")


def valid_steps(seq_lengths: Array | None, batch: int, time: int) -> Array:
  """[B, T] float mask, 1 on the first seq_lengths[b] steps of row b (all ones if None)."""
  if seq_lengths is None:
    return jnp.ones((batch, time), jnp.float32)
  return (jnp.arange(time)[None, :] < jnp.asarray(seq_lengths)[:, None]).astype(jnp.float32)


def masked_mean_over_time(x: Array, mask: Array) -> Array:
  """Mean of x [B, T, D] over the steps where mask [B, T] is 1 (zeros for an empty row)."""
  total = jnp.einsum("btd,bt->bd", x, mask.astype(x.dtype))
  return total / jnp.maximum(mask.sum(axis=1), 1.0)[:, None].astype(x.dtype)


def encode_frames(image_model: nn.Module, clips: Array, train: bool = False) -> Array:
  """Applies `image_model` (headless: it returns features) to every frame in one call.

  Args:
    image_model: a bound image model mapping [N, H, W, C] to [N, ...] features.
    clips: [B, T, H, W, C] frames.
    train: the image model's training mode.

  Returns:
    [B, T, D] per-frame features (a feature grid [H', W', C'] flattened to D = H' W' C').
  """
  b, t = clips.shape[:2]
  frames = clips.reshape((b * t,) + clips.shape[2:])  # [B*T, H, W, C]
  return image_model(frames, train).reshape(b, t, -1)  # [B, T, D]


def headless_image_model(model: str, kwargs: Mapping[str, Any] | None, **extra) -> nn.Module:
  """The registry image model `model` created with `num_classes=0` (its head removed).

  Raises:
    ValueError: unknown name, or `kwargs` setting num_classes.
  """
  from cnnrnn import models  # pylint: disable=g-import-not-at-top  (the registry imports us)

  kwargs = dict(kwargs or {})
  if "num_classes" in kwargs:
    raise ValueError(f"model.encoder_kwargs sets num_classes={kwargs['num_classes']}; the "
                     "encoder is always created without its head (num_classes=0)")
  return models.get_constructor(model)(num_classes=0, **kwargs, **extra)


class VideoClassifier(nn.Module):
  """Frame encoder -> (bi)RNN over time -> clip logits (optionally per-frame logits too).

  Parameters: `encoder/...` (the image model's, head excluded), `rnn/layer{i}/...`,
  `head/kernel` [H or 2H (D without an RNN), num_classes], `head/bias`.

  Attributes:
    num_classes: number of clip classes.
    encoder: registry name of the frame encoder ("conv_stack", "lenet5", "cifar_resnet20",
      "resnet18", ...).
    encoder_kwargs: the frame encoder's keyword arguments (never num_classes).
    cell: "lstm", "gru" or "simple"; None: no RNN (single-frame baseline, see module doc).
    hidden_size: H of every recurrent layer.
    num_layers: recurrent layers.
    bidirectional: each recurrent layer reads the clip both ways.
    readout: "last" (the final carry: forward state after the last valid frame, and the
      backward state at frame 0 when bidirectional) or "mean" (the outputs averaged over
      valid frames). Without an RNN the frame logits are always averaged.
    freeze_encoder: run the encoder in inference mode and stop its gradient.
    dropout: dropout on the per-frame features and before the head.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int = 10
  encoder: str = "conv_stack"
  encoder_kwargs: Mapping[str, Any] | None = None
  cell: str | None = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  readout: str = "last"
  freeze_encoder: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips: Array, train: bool = False, *, seq_lengths: Array | None = None,
               return_frame_logits: bool = False):
    """Classifies clips.

    Args:
      clips: [B, T, H, W, C] frames.
      train: training mode (dropout, BatchNorm statistics; needs a "dropout" rng with dropout).
      seq_lengths: optional [B] numbers of valid frames (the rest is padding).
      return_frame_logits: also return per-frame logits [B, T, num_classes] (from the RNN's
        output at each frame; the frame's own logits without an RNN). Rows past a clip's
        length are unspecified: mask them.

    Returns:
      clip logits [B, num_classes], or (clip logits, frame logits) with return_frame_logits.

    Raises:
      ValueError: clips not of rank 5, an unknown cell or readout.
    """
    if clips.ndim != 5:
      raise ValueError(f"video_classifier takes clips [B, T, H, W, C], got shape {clips.shape}")
    if self.cell is not None and self.cell not in CELLS:
      raise ValueError(f"model.cell={self.cell!r}; allowed: None, {', '.join(sorted(CELLS))}")
    if self.readout not in READOUTS:
      raise ValueError(f"model.readout={self.readout!r}; allowed: {', '.join(READOUTS)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, t = clips.shape[:2]
    mask = valid_steps(seq_lengths, b, t)  # [B, T]
    encoder = headless_image_model(self.encoder, self.encoder_kwargs, name="encoder", **kw)
    features = encode_frames(encoder, clips.astype(self.dtype),
                             train and not self.freeze_encoder)  # [B, T, D]
    if self.freeze_encoder:
      features = jax.lax.stop_gradient(features)
    features = nn.Dropout(self.dropout, deterministic=not train)(features)
    head = nn.Dense(self.num_classes, name="head", **kw)

    if self.cell is None:  # Single-frame baseline: average the frames' own predictions.
      frame_logits = head(features)  # [B, T, num_classes]
      logits = masked_mean_over_time(frame_logits, mask)
      return (logits, frame_logits) if return_frame_logits else logits

    rnn = StackedRNN(cell=self.cell, hidden_size=self.hidden_size, num_layers=self.num_layers,
                     bidirectional=self.bidirectional, dropout=self.dropout, return_carry=True,
                     name="rnn", **kw)
    carry, outputs = rnn(features, train, seq_lengths=seq_lengths)  # outputs [B, T, D*H]
    if self.readout == "mean":
      clip = masked_mean_over_time(outputs, mask)
    else:
      cell = make_cell(self.cell, self.hidden_size, parent=None)
      last = carry[-1] if self.bidirectional else (carry[-1],)
      clip = jnp.concatenate([cell.hidden_state(c) for c in last], axis=-1)  # [B, D*H]
    clip = nn.Dropout(self.dropout, deterministic=not train)(clip)
    logits = head(clip)
    if return_frame_logits:
      return logits, head(outputs)
    return logits
