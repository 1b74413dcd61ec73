"""Attention strips of the captioner and frame strips of the video classifier."""

import jax
import matplotlib.image
import numpy as np
import pytest

from cnnrnn import decode
from cnnrnn import models
from cnnrnn.analysis import hybrids

VOCAB = ("<pad>", "<unk>", "<bos>", "<eos>", *"abcdefgh")
IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))


def _captioner(**kwargs):
  model = models.create("captioner", vocab_size=len(VOCAB), embed_size=8, hidden_size=8,
                        attention_size=8, encoder_kwargs=dict(features=(4, 8), dense=()),
                        **kwargs)
  tgt = np.full((2, 3), decode.BOS_ID)
  return model, model.init(jax.random.key(1), IMAGES, tgt)


@pytest.mark.slow
def test_caption_strips_show_each_generated_word(tmp_path):
  model, variables = _captioner()
  tokens, _ = decode.generate(model, variables, IMAGES, max_len=5)
  alpha = hybrids.caption_attention(model, variables, IMAGES, tokens)
  assert alpha.shape == (2, 5, 16)
  np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)
  paths = hybrids.caption_strips(model, variables, IMAGES, tmp_path, vocab=VOCAB, max_len=5)
  assert [p.rsplit("/", 1)[1] for p in paths] == ["caption_0.png", "caption_1.png"]
  short = hybrids.plot_caption_attention(IMAGES[0], ["a"], alpha[0], (4, 4), tmp_path / "s.png")
  long = hybrids.plot_caption_attention(IMAGES[0], list("abcd"), alpha[0], (4, 4),
                                        tmp_path / "l.png")
  # One panel per word after the image: the strip grows with the caption.
  assert matplotlib.image.imread(long).shape[1] > 2 * matplotlib.image.imread(short).shape[1]
  with pytest.raises(ValueError, match="does not fit 1 words over a 3x3 grid"):
    hybrids.plot_caption_attention(IMAGES[0], ["a"], alpha[0], (3, 3), tmp_path / "x.png")
  model, variables = _captioner(attention=False)
  with pytest.raises(ValueError, match="no attention"):
    hybrids.caption_attention(model, variables, IMAGES, tokens)


def test_clip_strip(tmp_path):
  frames = np.random.default_rng(0).random((6, 12, 12, 1))
  full = hybrids.plot_clip(frames, tmp_path / "a.png", "up-left", label="up-left")
  cut = hybrids.plot_clip(frames, tmp_path / "b.png", "3", length=3)
  assert matplotlib.image.imread(full).shape[1] > matplotlib.image.imread(cut).shape[1]
