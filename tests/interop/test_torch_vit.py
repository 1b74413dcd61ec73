"""timm ViT state dicts <-> cnnrnn ViT: logits equal to float32 rounding, both directions."""

import functools

import jax
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn.interop import torch_zoo

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from timm.layers import resample_abs_pos_embed  # noqa: E402  pylint: disable=g-import-not-at-top

TIMM = {"vit_ti16": "vit_tiny_patch16_224", "vit_s16": "vit_small_patch16_224"}


@functools.cache
def _timm(name, **kwargs):
  """A timm ViT in eval mode with random weights (zero-mean noise added to timm's init,
  so that biases, LayerNorms and the head are not trivial)."""
  torch.manual_seed(0)
  model = timm.create_model(TIMM[name], pretrained=False, **kwargs).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return model


def _images(size, batch=2):
  return np.random.RandomState(1).randn(batch, 3, size, size).astype(np.float32)


def _close(got, want):
  assert np.abs(np.asarray(got) - want).max() <= 1e-5 * np.abs(want).max()


@functools.cache
def _apply(name, **kwargs):
  model = models.create(name, **kwargs)
  return jax.jit(lambda v, x: model.apply(v, x))


def _ours(name, variables, x, **kwargs):
  return _apply(name, **kwargs)(variables, x.transpose(0, 2, 3, 1))


# Tiny at 224 and small at 96 (a model made for 96x96, as timm's img_size=96): small at 224
# took ~30 s on the shared 2 cores, and its conversion is the same code at other widths.
@pytest.mark.parametrize("name,size", [("vit_ti16", 224), ("vit_s16", 96)])
@pytest.mark.slow
def test_logits_match_timm_both_ways(name, size):
  kwargs = {} if size == 224 else {"img_size": size}
  ours_kwargs = {} if size == 224 else {"image_size": size}
  tmodel = _timm(name, **kwargs)
  x = _images(size)
  with torch.no_grad():
    want = tmodel(torch.from_numpy(x)).numpy()
  variables = torch_zoo.from_torch(name, tmodel.state_dict(), **ours_kwargs)
  _close(_ours(name, variables, x, **ours_kwargs), want)
  # The other way: our (random, differently initialised) variables drive timm's model.
  ours = models.create(name, **ours_kwargs).init(jax.random.key(0), x[:1].transpose(0, 2, 3, 1))
  head = ours["params"]["head"]["kernel"]
  ours["params"]["head"]["kernel"] = jax.random.normal(jax.random.key(1), head.shape)
  back = timm.create_model(TIMM[name], pretrained=False, **kwargs).eval()
  back.load_state_dict(torch_zoo.to_torch(name, jax.device_get(ours), tensors=True))  # strict
  with torch.no_grad():
    _close(_ours(name, ours, x, **ours_kwargs), back(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("name,size", [("vit_ti16", 160), ("vit_s16", 96)])
@pytest.mark.slow
def test_another_resolution_matches_timms_resampling(name, size):
  grid = size // 16
  tmodel = _timm(name)
  state_dict = tmodel.state_dict()
  resized = dict(state_dict, pos_embed=resample_abs_pos_embed(state_dict["pos_embed"], (grid, grid),
                                                              num_prefix_tokens=1))
  treference = timm.create_model(TIMM[name], pretrained=False, img_size=size).eval()
  treference.load_state_dict(resized)
  x = _images(size)
  with torch.no_grad():
    want = treference(torch.from_numpy(x)).numpy()
  # Resampled while converting, for a model made for this size ...
  variables = torch_zoo.from_torch(name, state_dict, image_size=size)
  _close(_ours(name, variables, x, image_size=size), want)
  # ... or on every call by the 224 model; and back to timm's layout at the new size.
  _close(_ours(name, torch_zoo.from_torch(name, state_dict), x), want)
  exported = torch_zoo.to_torch(name, jax.device_get(variables))
  np.testing.assert_allclose(exported["pos_embed"], resized["pos_embed"].numpy(), atol=2e-6)


def test_global_average_pooling_matches_timm():
  kwargs = dict(class_token=False, global_pool="avg")
  tmodel = _timm("vit_ti16", **kwargs)
  state_dict = tmodel.state_dict()
  assert "fc_norm.weight" in state_dict and "cls_token" not in state_dict
  x = _images(224)
  with torch.no_grad():
    want = tmodel(torch.from_numpy(x)).numpy()
  assert torch_zoo.kwargs_from_state_dict("vit_ti16", state_dict)["pooling"] == "gap"
  variables = torch_zoo.from_torch("vit_ti16", state_dict, pooling="gap")
  _close(_ours("vit_ti16", variables, x, pooling="gap"), want)
  back = torch_zoo.to_torch("vit_ti16", variables)  # pooling read from the variables
  assert set(back) == set(state_dict)


def test_state_dicts_that_do_not_fit():
  tiny = _timm("vit_ti16").state_dict()
  with pytest.raises(ValueError, match=r"patch_embed.proj.weight: shape \(192, 3, 16, 16\) does "
                                       r"not fit 'vit_s16', which expects \(384, 3, 16, 16\)"):
    torch_zoo.from_torch("vit_s16", tiny)
  resnet_like = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
  with pytest.raises(ValueError, match=r"state dict does not fit 'vit_ti16': missing keys "
                                       r"\[patch_embed.proj.weight"):
    torch_zoo.from_torch("vit_ti16", resnet_like)
  with pytest.raises(ValueError, match=r"not a timm ViT state dict: no 'patch_embed.proj.weight'"):
    torch_zoo.kwargs_from_state_dict("vit_ti16", resnet_like)
