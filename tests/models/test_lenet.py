import jax
import jax.numpy as jnp
import pytest

from cnnrnn import models
from cnnrnn.analysis import count_params


def test_lenet5_parameter_count_and_shape():
  model = models.create("lenet5")
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1))))
  # conv1 156 + conv2 2,416 + fc1 48,120 + fc2 10,164 + head 850.
  assert count_params(variables) == 61_706
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1))),
                                           jnp.zeros((2, 32, 32, 1))))
  assert out.shape == (2, 10)


@pytest.mark.parametrize("kwargs", [{"activation": "swish"}, {"pooling": "median"}])
def test_lenet5_rejects_unknown_options(kwargs):
  model = models.create("lenet5", **kwargs)
  with pytest.raises(ValueError, match="allowed"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_conv_stack_global_pool_accepts_any_size():
  model = models.create("conv_stack", num_classes=7, features=(4, 8), batch_norm=True, global_pool=True)
  for size in (8, 20):
    x = jnp.zeros((3, size, size, 2))
    variables = model.init(jax.random.key(0), x)
    assert model.apply(variables, x).shape == (3, 7)


def test_registry_errors_list_known_names():
  with pytest.raises(ValueError, match="lenet5"):
    models.create("lenet6")
  with pytest.raises(ValueError, match="bad keyword"):
    models.create("lenet5", num_clases=10)
  assert {"lenet5", "conv_stack"} <= set(models.names())


def test_lenet5_rejects_inputs_that_are_not_32x32():
  # 28x28 would silently build a 44,426-parameter network (a 4x4 map before the dense layers).
  model = models.create("lenet5")
  with pytest.raises(ValueError, match=r"lenet5 takes 32x32 images, got 28x28.*pad_to=32"):
    model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
