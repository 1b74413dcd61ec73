"""video_classifier: the frame encoder over time is the image model frame by frame, padding
frames never change a valid prediction, a frozen encoder gets no gradient, and a pretrained
image model loads into the encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn import transfer

ENCODER = dict(features=(4, 8), pool_every=1, dense=(8,))
CLIPS = jax.random.normal(jax.random.key(0), (3, 5, 12, 12, 1))


def _model(**kwargs):
  return models.create("video_classifier", num_classes=4, encoder_kwargs=ENCODER,
                       hidden_size=6, **kwargs)


@pytest.mark.parametrize("encoder,kwargs", [
    ("conv_stack", dict(ENCODER, batch_norm=True)),
    ("cifar_resnet20", dict(widths=(4, 4, 8), stem_width=4)),
])
@pytest.mark.slow
def test_frame_features_equal_the_image_model_frame_by_frame(encoder, kwargs):
  model = models.create("video_classifier", num_classes=4, encoder=encoder,
                        encoder_kwargs=kwargs, hidden_size=6)
  variables = model.init(jax.random.key(1), CLIPS)
  image_model = models.create(encoder, num_classes=0, **kwargs)
  enc_vars = {c: tree["encoder"] for c, tree in variables.items()}
  per_frame = jnp.stack([image_model.apply(enc_vars, CLIPS[:, t]) for t in range(5)], axis=1)

  # The encoder's output inside the model (one call over the B*T frames), captured.
  _, state = model.apply(variables, CLIPS, capture_intermediates=True, mutable=["intermediates"])
  batched = state["intermediates"]["encoder"]["__call__"][0].reshape(3, 5, -1)
  assert len(state["intermediates"]["encoder"]["__call__"]) == 1  # one batched call
  np.testing.assert_allclose(batched, per_frame, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(cell="lstm"), dict(cell="gru", bidirectional=True), dict(cell="lstm", readout="mean"),
    dict(cell="lstm", num_layers=2, bidirectional=True), dict(cell=None),
])
@pytest.mark.slow
def test_padding_frames_never_change_a_valid_prediction(kwargs):
  model = _model(**kwargs)
  lengths = jnp.array([5, 3, 1])
  variables = model.init(jax.random.key(1), CLIPS, seq_lengths=lengths)
  logits, frames = model.apply(variables, CLIPS, seq_lengths=lengths, return_frame_logits=True)
  noise = jax.random.normal(jax.random.key(9), CLIPS.shape) * 10
  valid = (jnp.arange(5)[None, :] < lengths[:, None])[:, :, None, None, None]
  garbage = jnp.where(valid, CLIPS, noise)
  logits2, frames2 = model.apply(variables, garbage, seq_lengths=lengths,
                                 return_frame_logits=True)
  np.testing.assert_allclose(logits2, logits, rtol=1e-5, atol=1e-5)
  # Each clip alone, cut to its length, gives the same prediction.
  for b, n in enumerate(lengths.tolist()):
    alone = model.apply(variables, CLIPS[b:b + 1, :n])
    np.testing.assert_allclose(alone[0], logits[b], rtol=1e-5, atol=1e-5)
    if not kwargs.get("bidirectional"):  # causal per-frame outputs on the valid frames
      np.testing.assert_allclose(frames2[b, :n], frames[b, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_frozen_encoder_gets_no_gradient():
  model = _model(freeze_encoder=True, cell="lstm")
  variables = model.init(jax.random.key(1), CLIPS)
  grads = jax.grad(lambda p: model.apply({"params": p}, CLIPS, train=True).sum())(
      variables["params"])
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads["encoder"]))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["rnn"]))


@pytest.mark.slow
def test_pretrained_image_model_loads_into_the_encoder():
  image_model = models.create("conv_stack", num_classes=10, **ENCODER)
  source = image_model.init(jax.random.key(5), CLIPS[:, 0])
  model = _model()
  target = jax.device_get(model.init(jax.random.key(1), CLIPS))
  loaded = transfer.adapt_into(source, target, "encoder")
  for name in ("conv0", "conv1", "fc0"):
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(loaded["params"]["encoder"][name][leaf],
                                    source["params"][name][leaf])
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"],
                                target["params"]["head"]["kernel"])
  with pytest.raises(ValueError, match="target_module='rnnn' is not a top-level module"):
    transfer.adapt_into(source, target, "rnnn")
  other = models.create("conv_stack", num_classes=10, features=(4, 16), dense=(8,))
  with pytest.raises(ValueError, match="has shape"):
    transfer.adapt_into(other.init(jax.random.key(5), CLIPS[:, 0]), target, "encoder")


def test_bad_fields_are_named():
  with pytest.raises(ValueError, match="model.readout='first'"):
    _model(readout="first").init(jax.random.key(0), CLIPS)
  with pytest.raises(ValueError, match="encoder_kwargs sets num_classes"):
    models.create("video_classifier", encoder_kwargs=dict(num_classes=3)).init(
        jax.random.key(0), CLIPS)
  with pytest.raises(ValueError, match=r"clips \[B, T, H, W, C\]"):
    _model().init(jax.random.key(0), CLIPS[:, 0])
