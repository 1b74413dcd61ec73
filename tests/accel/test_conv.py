"""The convolution primitives: the native kernels equal XLA's, forward and both gradients."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import accel
from cnnrnn.accel import conv

NHWC = ("NHWC", "HWIO", "NHWC")
native_only = pytest.mark.skipif(not accel.available()[0],
                                 reason=f"native kernels unavailable: {accel.available()[1]}")


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _xla_conv(x, w, pad, strides):
  return lax.conv_general_dilated(x, w, strides, [(pad[0], pad[0]), (pad[1], pad[1])],
                                  dimension_numbers=NHWC)


@native_only
@pytest.mark.parametrize("b,h,w,cin,cout,k,pad,stride", [
    (2, 8, 8, 16, 16, 3, 1, 1),     # ResNet 3x3, one vector of output channels
    (3, 7, 9, 5, 20, 3, 1, 1),      # odd sizes; a masked tail of output channels
    (2, 12, 12, 6, 16, 5, 0, 1),    # LeNet conv2 (its input gradient has 6 channels)
    (2, 12, 12, 1, 6, 5, 2, 1),     # one input channel, six output channels
    (2, 10, 10, 8, 72, 3, 1, 1),    # more than 64 output channels: two column blocks
    (2, 9, 9, 16, 32, 3, 1, 2),     # strided, odd input (the last row is never read)
    (2, 15, 15, 3, 24, 7, 3, 2),    # ImageNet ResNet stem shape
    (2, 6, 6, 8, 16, 1, 0, 1),      # 1x1
    (2, 40, 37, 2, 3, 7, 3, 1),     # few output channels, rows longer than two vectors
    (3, 11, 11, 4, 8, 3, 1, 2),     # few output channels, strided (channel-vector kernels)
])
def test_conv2d_and_its_gradients_equal_xla(b, h, w, cin, cout, k, pad, stride):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, h, w, cin), np.float32))
  kern = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
  pads, strides = (pad, pad), (stride, stride)

  def loss(conv_fn, x, kern):  # A non-uniform cotangent.
    y = conv_fn(x, kern)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) / y.size)

  mine = lambda x, kern: conv.conv2d(x, kern, pads, strides)
  ref = lambda x, kern: _xla_conv(x, kern, pads, strides)
  y, y_ref = jax.jit(mine)(x, kern), jax.jit(ref)(x, kern)
  assert y.shape == y_ref.shape
  assert _rel(y, y_ref) < 1e-5
  grad = jax.jit(jax.grad(lambda x, k: loss(mine, x, k), argnums=(0, 1)))
  text = grad.lower(x, kern).as_text()
  assert "cnnrnn_conv2d_fwd" in text and "cnnrnn_conv2d_dw" in text
  grads = grad(x, kern)
  grads_ref = jax.jit(jax.grad(lambda x, k: loss(ref, x, k), argnums=(0, 1)))(x, kern)
  for g, g_ref in zip(grads, grads_ref):
    assert _rel(g, g_ref) < 1e-5
  # Deterministic: the same inputs give bit-identical results.
  again = jax.jit(jax.grad(lambda x, k: loss(mine, x, k), argnums=1))(x, kern)
  np.testing.assert_array_equal(again, grads[1])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.slow
def test_second_order_rules_equal_xla(stride):
  # Forward over reverse in both operands (Hessian-vector products), per-example gradients
  # (vmap of grad) and jacfwd stay on the primitives and equal XLA's.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 7, 7, 3), np.float32))
  kern = jnp.asarray(rng.standard_normal((3, 3, 3, 8), np.float32))
  mine = lambda x, k: conv.conv2d(x, k, (1, 1), (stride, stride))
  ref = lambda x, k: _xla_conv(x, k, (1, 1), (stride, stride))
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  for argnum in (0, 1):
    hvp = lambda f: jax.jit(lambda x, k: jax.jvp(jax.grad(loss(f), argnum), (x, k), (x, k))[1])
    assert _rel(hvp(mine)(x, kern), hvp(ref)(x, kern)) < 1e-5
  per_example = lambda f: jax.jit(jax.vmap(jax.grad(loss(f), 1), (0, None)))(x[:, None], kern)
  assert _rel(per_example(mine), per_example(ref)) < 1e-5
  assert _rel(jax.jit(jax.jacfwd(mine))(x[:1, :4, :4], kern),
              jax.jacfwd(ref)(x[:1, :4, :4], kern)) < 1e-5
  batched = jax.jit(jax.vmap(mine, (1, None), 1))(jnp.stack([x, 2 * x], 1), kern)
  assert _rel(batched[:, 1], 2 * ref(x, kern)) < 1e-5


@pytest.mark.parametrize("padding,strides,primitive_expected", [
    (((1, 1), (1, 1)), (1, 1), True),
    ("SAME", (1, 1), True),
    ("SAME", (2, 2), False),        # SAME at stride 2 on an even input pads (0, 1): XLA's
    (((0, 1), (0, 1)), (1, 1), False),
    ("VALID", (2, 2), True),
])
def test_conv_general_dilated_dispatch(padding, strides, primitive_expected):
  x = jnp.ones((2, 8, 8, 4))
  kern = jnp.ones((3, 3, 4, 16))
  fn = lambda x: conv.conv_general_dilated(x, kern, strides, padding, dimension_numbers=NHWC)
  assert ("cnnrnn_conv" in str(jax.make_jaxpr(fn)(x))) == primitive_expected
  ref = lax.conv_general_dilated(x, kern, strides, padding, dimension_numbers=NHWC)
  assert _rel(jax.jit(fn)(x), ref) < 1e-6


def test_other_layouts_and_dtypes_go_to_xla():
  x = jnp.ones((2, 4, 8, 8))
  kern = jnp.ones((16, 4, 3, 3))
  nchw = jax.make_jaxpr(lambda x: conv.conv_general_dilated(x, kern, (1, 1), "SAME"))(x)
  assert "cnnrnn_conv" not in str(nchw)
  xb, kb = jnp.ones((2, 8, 8, 4), jnp.bfloat16), jnp.ones((3, 3, 4, 16), jnp.bfloat16)
  bf16 = jax.make_jaxpr(lambda x: conv.conv_general_dilated(x, kb, (1, 1), "SAME",
                                                            dimension_numbers=NHWC))(xb)
  assert "cnnrnn_conv" not in str(bf16)


def test_flax_conv_is_accelerated_with_its_own_parameters():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 3), np.float32))
  module = nn.Conv(16, (3, 3), padding=1)
  variables = module.init(jax.random.key(0), x)
  apply = lambda v, x: module.apply(v, x)
  on = accel.accelerate(apply, "cpu_native")
  assert "cnnrnn_conv" in str(jax.make_jaxpr(on)(variables, x))
  assert "cnnrnn_conv" not in str(jax.make_jaxpr(apply)(variables, x))
  assert _rel(jax.jit(on)(variables, x), apply(variables, x)) < 1e-6
  # Initialised under acceleration: the same variables.
  assert jax.tree.map(jnp.shape, jax.eval_shape(accel.accelerate(module.init, "cpu_native"),
                                                jax.random.key(0), x)) == jax.tree.map(
                                                    jnp.shape, variables)
  # A Conv that chose its own convolution is left alone.
  own = nn.Conv(16, (3, 3), padding=1, conv_general_dilated=lax.conv_general_dilated)
  assert "cnnrnn_conv" not in str(jax.make_jaxpr(accel.accelerate(own.apply, "cpu_native"))(
      variables, x))
