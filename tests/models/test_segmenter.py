"""segmenter: per-pixel logits at the input's size, parameter counts by hand, a backbone that
is the classifier's (so its checkpoint loads), composability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import models


def _count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("decoder", ["fcn", "unet"])
def test_shapes_and_parameter_counts(decoder):
  model = models.create("segmenter", num_classes=11, decoder=decoder)
  x = jnp.zeros((2, 30, 30, 1))  # odd sizes: 30 -> 15 -> 8 in the stages
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x))
  assert out.shape == (2, 30, 30, 11)
  classifier = models.create("cifar_resnet20", num_classes=10)
  source = jax.eval_shape(classifier.init, jax.random.PRNGKey(0), x)
  backbone = {k: v for k, v in source["params"].items() if k != "head"}
  # The backbone has exactly the classifier's modules and shapes, minus its head.
  assert jax.tree.map(lambda a: a.shape, backbone) == jax.tree.map(
      lambda a: a.shape, dict(variables["params"]["backbone"]))
  head = variables["params"]["head"]
  if decoder == "fcn":  # a 1x1 score conv on the stem (16) and the three stages (16, 32, 64)
    want = sum(11 * (c + 1) for c in (16, 16, 32, 64))
  else:  # per skip: two 3x3 ConvBN (no bias; BN scale + shift), then a 1x1 score conv
    want = ((9 * (64 + 32) * 32 + 9 * 32 * 32 + 4 * 32)
            + (9 * (32 + 16) * 16 + 9 * 16 * 16 + 4 * 16)
            + (9 * (16 + 16) * 16 + 9 * 16 * 16 + 4 * 16) + 11 * 17)
  assert _count(head) == want
  assert _count(variables["params"]) == _count(backbone) + want


def test_imagenet_backbone_and_bad_fields():
  model = models.create("segmenter", num_classes=3, backbone="resnet18")
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0),
                                                      jnp.zeros((1, 64, 48, 3)))[0])
  assert out.shape == (1, 64, 48, 3)
  with pytest.raises(ValueError, match="model.backbone='vgg16'; allowed: resnet18.*cifar_resnet"):
    models.create("segmenter", num_classes=3, backbone="vgg16").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="model.decoder='deeplab'"):
    models.create("segmenter", num_classes=3, decoder="deeplab").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.slow
def test_composability_jit_grad_vmap():
  model = models.create("segmenter", num_classes=4, backbone="cifar_resnet8")
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)

  @jax.jit
  def run(variables):
    logits = model.apply(variables, x)
    per_example = jax.vmap(lambda e: model.apply(variables, e[None])[0])(x)

    def loss(params):
      out, _ = model.apply({**variables, "params": params}, x, train=True,
                           mutable=["batch_stats"])
      return jax.nn.logsumexp(out, axis=-1).mean()

    return logits, per_example, jax.grad(loss)(variables["params"])

  logits, per_example, grads = run(variables)
  assert logits.shape == (2, 8, 8, 4)
  np.testing.assert_allclose(per_example, logits, rtol=1e-4, atol=1e-4)
  assert all(jnp.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["backbone"]["stem"]["conv"]["kernel"]).sum()) > 0


def test_a_classifier_checkpoint_loads_into_the_backbone():
  from cnnrnn.models.resnet import cifar_resnet  # pylint: disable=g-import-not-at-top
  from cnnrnn.transfer import heads  # pylint: disable=g-import-not-at-top

  x = jnp.zeros((1, 28, 28, 1))
  zeros = lambda tree: jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), tree)
  source = zeros(jax.eval_shape(cifar_resnet(8)(num_classes=10).init, jax.random.PRNGKey(0), x))
  target = zeros(jax.eval_shape(models.create("segmenter", num_classes=11,
                                              backbone="cifar_resnet8").init,
                                jax.random.PRNGKey(0), x))
  target = jax.tree.map(np.zeros_like, target)
  loaded = heads.adapt_into(source, target, "backbone")
  for collection in ("params", "batch_stats"):
    backbone = jax.tree.leaves(loaded[collection]["backbone"])
    assert backbone and all(np.all(v == 0.5) for v in backbone)
  assert all(np.all(v == 0) for v in jax.tree.leaves(loaded["params"]["head"]))
