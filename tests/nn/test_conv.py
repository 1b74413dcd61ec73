"""Residual blocks, option-A shortcuts and torch-style padding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import nn as cnn


def test_pad_shortcut_subsamples_and_zero_pads_channels():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  y = cnn.pad_shortcut(x, 7, 2)
  assert y.shape == (2, 2, 2, 7)
  np.testing.assert_array_equal(y[..., 2:5], x[:, ::2, ::2, :])
  assert not np.any(y[..., :2]) and not np.any(y[..., 5:])
  with pytest.raises(ValueError, match="reduce channels"):
    cnn.pad_shortcut(x, 2, 1)


@pytest.mark.parametrize("block,shortcut,params", [
    (cnn.BasicBlock, "projection", {"conv1", "bn1", "conv2", "bn2", "downsample"}),
    (cnn.BasicBlock, "pad", {"conv1", "bn1", "conv2", "bn2"}),
    (cnn.BottleneckBlock, "projection", {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"}),
])
def test_blocks_downsample(block, shortcut, params):
  module = block(8, 2, shortcut=shortcut)
  x = jnp.ones((2, 9, 9, 8))
  variables = module.init(jax.random.key(0), x, train=False)
  assert set(variables["params"]) == params
  y = module.apply(variables, x, train=False)
  assert y.shape == (2, 5, 5, 8 * block.expansion)


def test_identity_shortcut_has_no_parameters():
  variables = cnn.BasicBlock(8).init(jax.random.key(0), jnp.ones((1, 6, 6, 8)), train=False)
  assert "downsample" not in variables["params"]


@pytest.mark.slow
def test_bad_shortcut_name():
  with pytest.raises(ValueError, match="shortcut"):
    cnn.BasicBlock(8, 2, shortcut="B").init(jax.random.key(0), jnp.ones((1, 4, 4, 4)), train=False)


def test_stride2_padding_is_symmetric_like_torch():
  # On an even input, "SAME" would pad (2, 3) for a 7x7/2 conv; torch pads (3, 3).
  module = cnn.ConvBN(1, 7, 2)
  x = jnp.zeros((1, 8, 8, 1)).at[0, 0, 0, 0].set(1.0)
  variables = module.init(jax.random.key(0), x, train=False)
  kernel = jnp.zeros((7, 7, 1, 1)).at[3, 3, 0, 0].set(1.0)  # picks the window's centre
  variables = {**variables, "params": {**variables["params"], "conv": {"kernel": kernel}}}
  y = module.apply(variables, x, train=False)
  assert y.shape == (1, 4, 4, 1)
  assert float(y[0, 0, 0, 0]) == pytest.approx(1 / np.sqrt(1 + 1e-5), rel=1e-6)


def test_conv_is_flax_conv():
  assert cnn.Conv is nn.Conv


@pytest.mark.slow
def test_remat_of_a_block_with_train_positional():
  # `nn.remat(..., static_argnums=...)` needs `train` positional: (self, x, train).
  block = nn.remat(cnn.BasicBlock, static_argnums=(2,))(8, 2, shortcut="pad")
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  variables = block.init(jax.random.key(1), x, False)

  def loss(params, module):
    y, _ = module.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  grads = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], block)
  want = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"],
                                                   cnn.BasicBlock(8, 2, shortcut="pad"))
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
