"""BatchNorm in training mode on the native channel sums equals Flax's, derivatives included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import accel
from cnnrnn import nn as cnn
from cnnrnn.accel import batch_norm


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _bn_loss_and_grads(module, variables, x, mode):
  def loss(params, x):
    y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              use_running_average=False, mutable=["batch_stats"])
    weights = jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) / y.size
    return jnp.sum(jnp.sin(y) * weights), (y, updates["batch_stats"])

  grad = jax.jit(accel.accelerate(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), mode))
  text = grad.lower(variables["params"], x).as_text()
  (_, (y, stats)), grads = grad(variables["params"], x)
  return (y, stats, grads), text


@pytest.mark.parametrize("shape,offset",
                         [((8, 6, 6, 16), 0.0), ((4, 5, 5, 20), 5.0), ((64, 24), -3.0)])
@pytest.mark.slow
def test_batch_norm_equals_flax_in_training(shape, offset):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape, np.float32) * 2 + offset)
  mine = cnn.BatchNorm(momentum=0.9, epsilon=1e-5)
  ref = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = ref.init(jax.random.key(0), x, use_running_average=False)
  assert (jax.tree.map(jnp.shape, mine.init(jax.random.key(0), x, use_running_average=False))
          == jax.tree.map(jnp.shape, variables))
  # Non-trivial scale, bias and running statistics.
  variables = jax.tree.map(lambda a: a + 0.3 * jnp.cos(jnp.arange(a.size, dtype=jnp.float32)),
                           variables)
  out_ref, _ = _bn_loss_and_grads(ref, variables, x, "xla")
  # Ours in both modes, and Flax's own BatchNorm accelerated.
  for module, mode in ((mine, "cpu_native"), (mine, "xla"), (ref, "cpu_native")):
    out, text = _bn_loss_and_grads(module, variables, x, mode)
    assert ("cnnrnn_channel_sums" in text) == (mode == "cpu_native" and accel.available()[0])
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out_ref)):
      assert _rel(a, b) < 2e-5
  # Evaluation uses the running statistics, as Flax.
  assert _rel(mine.apply(variables, x, use_running_average=True),
              ref.apply(variables, x, use_running_average=True)) < 1e-6


def test_batch_norm_statistics_are_accurate_for_a_large_mean():
  # mean(x**2) - mean(x)**2 in float32 loses the variance when |mean| >> std; the native
  # statistics accumulate in float64 about the first row.
  rng = np.random.default_rng(0)
  x64 = rng.standard_normal((256, 8, 8, 16)) * 0.01 + 100.0
  x = jnp.asarray(x64, jnp.float32)
  bn = cnn.BatchNorm(momentum=0.0)
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  apply = accel.accelerate(
      lambda v, x: bn.apply(v, x, use_running_average=False, mutable=["batch_stats"]), "cpu_native")
  _, updates = jax.jit(apply)(variables, x)
  var = np.asarray(x, np.float64).reshape(-1, 16).var(0)
  np.testing.assert_allclose(updates["batch_stats"]["var"], var, rtol=1e-4)


def _reference_bn(x, scale, bias, epsilon):
  mean = x.mean((0, 1), keepdims=True)
  var = jnp.square(x - mean).mean((0, 1), keepdims=True)
  y = (x - mean) * jax.lax.rsqrt(var + epsilon) * scale[None, None] + bias[None, None]
  return y, mean.reshape(-1), var.reshape(-1)


def test_forward_mode_and_second_order_equal_jax_numpy():
  rng = np.random.default_rng(2)
  x, dx = (jnp.asarray(rng.standard_normal((6, 5, 7), np.float32)) for _ in range(2))
  scale, bias = (jnp.asarray(rng.standard_normal(7, np.float32)) for _ in range(2))
  mine = lambda x, s, b: batch_norm.batch_norm_train(x, s, b, 1e-3)
  ref = lambda x, s, b: _reference_bn(x, s, b, 1e-3)
  args, tangents = (x, scale, bias), (dx, 0.5 * scale, bias)
  for a, b in zip(jax.jit(lambda *p: jax.jvp(mine, args, p)[1])(*tangents),
                  jax.jvp(ref, args, tangents)[1]):
    assert _rel(a, b) < 1e-5
  loss = lambda f: lambda *p: jnp.sum(jnp.sin(f(*p)[0])) + jnp.sum(f(*p)[2])
  hvp = lambda f: jax.jit(lambda *p: jax.jvp(jax.grad(loss(f), (0, 1, 2)), args, p)[1])
  for a, b in zip(hvp(mine)(*tangents), hvp(ref)(*tangents)):
    assert _rel(a, b) < 1e-4
  # Batch statistics per example under vmap.
  for a, b in zip(jax.jit(jax.vmap(mine, (0, None, None)))(x[:, None], scale, bias),
                  jax.vmap(ref, (0, None, None))(x[:, None], scale, bias)):
    assert _rel(a, b) < 1e-5
