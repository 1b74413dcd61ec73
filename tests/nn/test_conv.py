"""Residual blocks, option-A shortcuts and torch-style padding."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import nn as cnn
from cnnrnn.nn import conv


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


def test_materialize_is_an_exact_identity_kept_in_a_conditional():
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3)).at[0, 0, 0, 0].set(jnp.nan)
  token = jnp.ones((3, 3))  # A runtime value, as a kernel is: a constant would be folded.
  f = jax.jit(lambda x, token: conv.materialize(jnp.maximum(2 * x + 1, 0), token))
  np.testing.assert_array_equal(f(x, token), jnp.maximum(2 * x + 1, 0))  # NaN included.
  g = jax.grad(lambda x: jnp.sum(jnp.sin(conv.materialize(x, token))))(x[1:])
  np.testing.assert_array_equal(g, jnp.cos(x[1:]))
  # On CPU the value crosses a conditional, which XLA neither folds nor fuses through.
  assert "conditional(" in f.lower(x, token).compile().as_text()


def test_materialize_needs_no_collective_when_the_batch_is_sharded():
  """The predicate reads the replicated token: a batch-sharded x needs no communication."""
  code = """
import re, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from cnnrnn.nn import conv
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.device_put(jnp.ones((8, 4, 4, 16)), NamedSharding(mesh, P("data")))
token = jax.device_put(jnp.ones((3, 3)), NamedSharding(mesh, P()))
hlo = jax.jit(lambda x, t: conv.materialize(jnp.maximum(x, 0), t) * 3).lower(
    x, token).compile().as_text()
assert "conditional(" in hlo
print(sorted(set(re.findall(r"all-reduce|all-gather|collective-permute|all-to-all", hlo))))
"""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_resnet_outputs_and_gradients_do_not_depend_on_materialize(monkeypatch):
  model = cnn.BasicBlock(8, 2, shortcut="pad")
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  variables = model.init(jax.random.key(1), x, train=True)

  def loss(params):
    y, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  grad = lambda: jax.jit(jax.value_and_grad(loss))(variables["params"])
  kept = grad()
  monkeypatch.setattr(conv, "materialize", lambda x, token: x)
  plain = grad()
  # Equal up to float32 rounding: fusing differently may reorder a sum.
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(plain), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
