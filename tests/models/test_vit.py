"""ViT: timm's parameter counts, variants as data, attention weights, position-embedding
resampling, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn.models import vit

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

# Tiny enough to run: patch 4 on 16x16 images, 2 blocks.
SMALL = dict(patch_size=4, image_size=16, hidden_dim=24, depth=2, num_heads=3, mlp_dim=48,
             num_classes=5)


def _count(name, **kwargs):
  model = models.create(name, **kwargs)
  size = kwargs.get("image_size", 224)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))


@pytest.mark.parametrize("name,count", [
    ("vit_ti16", 5_717_416), ("vit_s16", 22_050_664), ("vit_b16", 86_567_656),
    ("vit_b32", 88_224_232), ("vit_l16", 304_326_632)])
def test_parameter_counts_are_timms(name, count):
  assert _count(name) == count  # shapes only: nothing is allocated


def test_huge_counts_as_timm_builds_it():
  with torch.device("meta"):
    huge = timm.create_model("vit_huge_patch14_224", num_classes=1000)
    want = sum(p.numel() for p in huge.parameters())
  assert _count("vit_h14") == want == 632_045_800


def test_variants_are_data():
  assert vit.decode_variant("S/16") == dict(hidden_dim=384, depth=12, mlp_dim=1536, num_heads=6,
                                            patch_size=16)
  assert models.create("vit_b32").patch_size == 32
  with pytest.raises(ValueError, match=r"ViT variant 'Q/16'; allowed: WIDTH/PATCH with WIDTH in "
                                       r"Ti, S, M, B, L, H"):
    vit.decode_variant("Q/16")


@pytest.mark.slow
def test_attention_weights_and_pooling():
  model = models.create("vit", **SMALL)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  logits, attention = model.apply(variables, x, return_attention=True)
  assert logits.shape == (2, 5) and attention.shape == (2, 2, 3, 17, 17)  # [L, B, H, T, T]
  np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(model.apply(variables, x), logits)
  gap = models.create("vit", **SMALL, pooling="gap")
  gap_vars = gap.init(jax.random.key(0), x)
  assert "cls_token" not in gap_vars["params"]
  assert gap_vars["params"]["pos_embed"].shape == (1, 16, 24)
  out = gap.apply(gap_vars, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert out.shape == (2, 5)
  with pytest.raises(ValueError, match=r"model.pooling='max'; allowed: token, gap"):
    models.create("vit", **SMALL, pooling="max").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"patch_size=4 needs image sides that are multiples of 4"):
    model.apply(variables, jnp.zeros((1, 18, 18, 3)))


@pytest.mark.parametrize("old,new", [(14, 24), (14, 10), (14, 7), (6, 9)])
def test_resampling_matches_timm(old, new):
  from timm.layers import resample_abs_pos_embed  # pylint: disable=g-import-not-at-top

  pos = np.random.RandomState(0).randn(1, 1 + old * old, 8).astype(np.float32)
  want = resample_abs_pos_embed(torch.from_numpy(pos), (new, new), num_prefix_tokens=1).numpy()
  got = vit.resample_pos_embed(jnp.asarray(pos), (new, new), 1)
  np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.slow
def test_another_resolution_resamples_on_the_fly_or_once():
  model = models.create("vit", **SMALL)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  variables["params"]["head"]["kernel"] = jax.random.normal(jax.random.key(3), (24, 5))
  x = jax.random.normal(jax.random.key(1), (2, 24, 24, 3))
  on_the_fly = model.apply(variables, x)
  once = vit.resample_position_embeddings(variables, 6)
  assert once["params"]["pos_embed"].shape == (1, 37, 24)
  bigger = models.create("vit", **(SMALL | {"image_size": 24}))
  np.testing.assert_allclose(bigger.apply(once, x), on_the_fly, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_gradients_reach_every_parameter_under_jit_remat_and_vmap():
  model = models.create("vit", **SMALL, dropout_rate=0.1)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  # The zero-initialised head would stop every other gradient at the first step.
  variables["params"]["head"]["kernel"] = jax.random.normal(jax.random.key(3), (24, 5))

  @jax.jit
  def loss(params, x):
    apply = jax.checkpoint(lambda p, x: model.apply({"params": p}, x, train=True,
                                                    rngs={"dropout": jax.random.key(4)}))
    return (apply(params, x) ** 2).mean()

  grads = jax.grad(loss)(variables["params"], x)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)
  per_example = jax.vmap(lambda im: model.apply(variables, im[None]))(x)
  np.testing.assert_allclose(per_example[:, 0], model.apply(variables, x), rtol=1e-5, atol=1e-6)
  bf16 = models.create("vit", **SMALL, dtype=jnp.bfloat16).apply(variables, x)
  assert bf16.dtype == jnp.bfloat16
