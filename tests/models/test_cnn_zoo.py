"""The CNN zoo: every name builds, output shapes, torchvision parameter counts, block behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn.analysis import count_params
from cnnrnn.models.resnet import cifar_resnet
from cnnrnn.models.vgg import vgg

# sum(p.numel() for p in torchvision.models.NAME().parameters()), torchvision 0.29.
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# He et al. 2015, table 6 ("# params").
CIFAR_PARAMS_M = {"cifar_resnet20": 0.27, "cifar_resnet32": 0.46, "cifar_resnet44": 0.66,
                  "cifar_resnet56": 0.85, "cifar_resnet110": 1.7}
# Smallest convenient input per name (AlexNet needs >= 63 pixels, VGG >= 32).
SMALL_SIZE = {"alexnet": 64, **{n: 32 for n in TORCHVISION_PARAMS if n != "alexnet"},
              **{n: 32 for n in CIFAR_PARAMS_M}}


def _abstract_init(model, size, batch=1):
  x = jnp.zeros((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def test_registry_has_every_cnn_name():
  assert set(SMALL_SIZE) <= set(models.names())


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_count_equals_torchvision(name):
  assert count_params(_abstract_init(models.create(name), 224)) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(CIFAR_PARAMS_M))
def test_cifar_resnet_param_count_matches_paper(name):
  n = count_params(_abstract_init(models.create(name), 32))
  assert round(n / 1e6, 2 if n < 1e6 else 1) == CIFAR_PARAMS_M[name]


def test_cifar_resnet20_exact_param_count():
  assert count_params(_abstract_init(models.create("cifar_resnet20"), 32)) == 269_722


@pytest.mark.parametrize("name", sorted(SMALL_SIZE))
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.slow
def test_output_shape(name, train):
  model = models.create(name, num_classes=7)
  size = SMALL_SIZE[name]
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = _abstract_init(model, size)

  def apply(variables, x):
    return model.apply(variables, x, train=train, rngs={"dropout": jax.random.key(1)},
                       mutable=["batch_stats"] if train else False)

  out = jax.eval_shape(apply, variables, x)
  logits = out[0] if train else out
  assert logits.shape == (2, 7)
  assert ("batch_stats" in variables) == (name.endswith("_bn") or "resnet" in name)


@pytest.mark.parametrize("name,size", [("alexnet", 100), ("vgg11", 80), ("resnet18", 200)])
def test_other_input_sizes(name, size):
  model = models.create(name, num_classes=5)
  variables = _abstract_init(model, size)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert out.shape == (1, 5)


def _random_variables(model, size, batch=1):
  """Concrete variables without compiling `init` (slow to compile for deep models)."""
  rng = np.random.RandomState(0)
  abstract = _abstract_init(model, size, batch)
  return jax.tree.map(lambda a: jnp.asarray(0.5 + rng.rand(*a.shape) if len(a.shape) == 1 else
                                            0.05 * rng.randn(*a.shape), a.dtype), abstract)


@pytest.mark.slow
def test_cifar_resnet20_runs_train_and_eval():
  model = models.create("cifar_resnet20")
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = _random_variables(model, 32)
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))  # deterministic
  logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert logits.shape == (4, 10) and bool(jnp.isfinite(logits).all())
  before = variables["batch_stats"]["stem"]["bn"]["mean"]
  assert not np.allclose(updates["batch_stats"]["stem"]["bn"]["mean"], before)


@pytest.mark.slow
def test_dropout_only_in_training():
  model = models.VGG(stage_sizes=(1, 1), widths=(4, 4), num_classes=3)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = _random_variables(model, 32)
  apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
  assert not np.allclose(apply(variables, x, jax.random.key(2)), apply(variables, x, jax.random.key(3)))
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))


def test_submodule_names_are_stable():
  params = _abstract_init(models.create("resnet50"), 32)["params"]
  assert {"stem", "stage1_block0", "stage4_block2", "head"} <= set(params)
  assert set(params["stage2_block0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"}
  assert params["stage2_block0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
  cifar = _abstract_init(models.create("cifar_resnet20"), 32)["params"]
  assert "downsample" not in cifar["stage2_block0"]  # option A: parameter-free shortcut


def test_zero_init_residual_zeroes_each_blocks_last_bn_scale():
  model = models.ResNet(stage_sizes=(1, 2), widths=(4, 8), stem="cifar", stem_width=4,
                        block="bottleneck", zero_init_residual=True)
  # rbg keys: threefry init of even a tiny ResNet takes ~7 s to compile on this CPU.
  init = jax.jit(lambda x: model.init(jax.random.key(1, impl="rbg"), x, train=False))
  params = init(jnp.zeros((1, 8, 8, 3)))["params"]
  for block in ("stage1_block0", "stage2_block1"):
    assert not np.any(params[block]["bn3"]["scale"])
    assert np.all(params[block]["bn1"]["scale"] == 1)
  assert np.all(params["stage2_block0"]["downsample"]["bn"]["scale"] == 1)


def test_stride_on_the_3x3_conv_of_bottlenecks():
  params = _abstract_init(models.create("resnet50"), 64)
  out = jax.eval_shape(
      lambda v, x: models.create("resnet50").apply(
          v, x, train=False, capture_intermediates=True, mutable=["intermediates"])[1],
      params, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  block = out["intermediates"]["stage2_block0"]
  assert block["conv1"]["__call__"][0].shape == (1, 16, 16, 128)
  assert block["conv2"]["__call__"][0].shape == (1, 8, 8, 128)


def test_bf16_compute():
  model = models.create("cifar_resnet20", dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3))
  variables = _abstract_init(model, 32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_bad_variants_raise_value_error():
  with pytest.raises(ValueError, match="6n \\+ 2"):
    cifar_resnet(21)
  with pytest.raises(ValueError, match="allowed"):
    vgg(12)
  with pytest.raises(ValueError, match="resnet18"):
    models.create("resnet17")
  model = models.create("resnet18", block="wide")
  with pytest.raises(ValueError, match="model.block"):
    _abstract_init(model, 32)
