"""Attention rollout (Abnar & Zuidema 2020) and the attention PNGs of a ViT."""

import jax
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn import train
from cnnrnn.analysis import attention_maps
from configs import quickstart

pytest.importorskip("matplotlib")


def _softmax_rows(rng, shape):
  x = np.exp(rng.randn(*shape).astype(np.float32))
  return x / x.sum(-1, keepdims=True)


def test_rollout_rows_sum_to_one_and_follow_the_recursion():
  rng = np.random.RandomState(0)
  attention = _softmax_rows(rng, (3, 2, 4, 5, 5))  # [L, B, H, T, T]
  rollout = attention_maps.attention_rollout(attention)
  assert rollout.shape == (2, 5, 5)
  np.testing.assert_allclose(rollout.sum(-1), 1.0, rtol=1e-5)
  mixed = [0.5 * a.mean(1) + 0.5 * np.eye(5) for a in attention]  # [B, T, T] per layer
  np.testing.assert_allclose(rollout, mixed[2] @ mixed[1] @ mixed[0], rtol=1e-5)
  for fusion in ("max", "min"):
    np.testing.assert_allclose(
        attention_maps.attention_rollout(attention, head_fusion=fusion).sum(-1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match=r"head_fusion='median'; allowed: mean, max, min"):
    attention_maps.attention_rollout(attention, head_fusion="median")


@pytest.mark.slow
def test_pngs_of_a_vit(tmp_path):
  model = models.create("vit", patch_size=4, image_size=16, hidden_dim=24, depth=2, num_heads=3,
                        mlp_dim=48, num_classes=5)
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  variables = model.init(jax.random.key(0), images)
  _, attention = model.apply(variables, images, return_attention=True)
  rollout = attention_maps.attention_rollout(attention)
  np.testing.assert_allclose(rollout.sum(-1), 1.0, rtol=1e-5)
  assert attention_maps.token_map(rollout[0], (4, 4)).shape == (4, 4)
  heads = attention_maps.plot_attention_heads(images[0], attention[-1, 0], tmp_path / "heads.png")
  roll = attention_maps.plot_attention_rollout(images[0], rollout[0], tmp_path / "rollout.png")
  for path in (heads, roll):
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match=r"17 patch tokens do not make a 4x4 grid"):
    attention_maps.token_map(rollout[0], (4, 4), num_prefix_tokens=0)


@pytest.mark.slow
def test_pngs_from_a_workdir(data_dir, tmp_path):
  c = quickstart.get_config()
  c.model = train.default_config().model
  c.model.name = "vit"
  c.model.update(dict(patch_size=2, image_size=8, hidden_dim=12, depth=1, num_heads=2, mlp_dim=16))
  c.mesh, c.dataset.data_dir, c.progress_bar = (("data", 1),), data_dir, False
  c.num_train_steps, c.checkpoint.async_save = 2, False
  train.train_and_evaluate(c, str(tmp_path))
  paths = attention_maps.plot_workdir_attention(str(tmp_path), num_images=2)
  assert sorted(p.rsplit("/", 1)[1] for p in paths) == [
      "test0_heads.png", "test0_rollout.png", "test1_heads.png", "test1_rollout.png"]
