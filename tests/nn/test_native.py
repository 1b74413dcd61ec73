"""Native CPU kernels: convolutions and BatchNorm equal XLA's / Flax's, gradients included."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn import nn as cnn
from cnnrnn.nn import native
from cnnrnn.nn.recurrent import _scan_custom_vjp

pytestmark = pytest.mark.skipif(not native.available()[0],
                                reason=f"native kernels unavailable: {native.available()[1]}")

NHWC = ("NHWC", "HWIO", "NHWC")


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _xla_conv(x, w, pad, strides):
  return lax.conv_general_dilated(x, w, strides, [(pad[0], pad[0]), (pad[1], pad[1])],
                                  dimension_numbers=NHWC)


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

  def loss(conv, x, kern):  # A non-uniform cotangent.
    y = conv(x, kern)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) / y.size)

  mine = jax.jit(lambda x, kern: native.conv2d(x, kern, pads, strides))
  ref = jax.jit(lambda x, kern: _xla_conv(x, kern, pads, strides))
  y, y_ref = mine(x, kern), ref(x, kern)
  assert y.shape == y_ref.shape
  assert _rel(y, y_ref) < 1e-5
  grads = jax.jit(jax.grad(lambda x, k: loss(mine, x, k), argnums=(0, 1)))(x, kern)
  grads_ref = jax.jit(jax.grad(lambda x, k: loss(ref, x, k), argnums=(0, 1)))(x, kern)
  for g, g_ref in zip(grads, grads_ref):
    assert _rel(g, g_ref) < 1e-5
  # Deterministic: the same inputs give bit-identical results.
  np.testing.assert_array_equal(jax.jit(jax.grad(lambda x, k: loss(mine, x, k), argnums=1))(x, kern),
                                grads[1])


@pytest.mark.parametrize("padding,strides,native_expected", [
    (((1, 1), (1, 1)), (1, 1), True),
    ("SAME", (1, 1), True),
    ("SAME", (2, 2), False),        # SAME at stride 2 on an even input pads (0, 1): XLA's
    (((0, 1), (0, 1)), (1, 1), False),
    ("VALID", (2, 2), True),
])
def test_conv_general_dilated_dispatch(padding, strides, native_expected):
  x = jnp.ones((2, 8, 8, 4))
  kern = jnp.ones((3, 3, 4, 16))
  fn = lambda x: native.conv_general_dilated(x, kern, strides, padding, dimension_numbers=NHWC)
  with native.override(True):
    hlo = jax.jit(fn).lower(x).as_text()
  assert ("cnnrnn_conv2d_fwd" in hlo) == native_expected
  ref = lax.conv_general_dilated(x, kern, strides, padding, dimension_numbers=NHWC)
  assert _rel(fn(x), ref) < 1e-6


def test_other_layouts_and_dtypes_go_to_xla():
  x = jnp.ones((2, 4, 8, 8))
  kern = jnp.ones((16, 4, 3, 3))
  nchw = jax.jit(lambda x: native.conv_general_dilated(x, kern, (1, 1), "SAME")).lower(x)
  assert "cnnrnn_conv2d" not in nchw.as_text()
  xb, kb = jnp.ones((2, 8, 8, 4), jnp.bfloat16), jnp.ones((3, 3, 4, 16), jnp.bfloat16)
  bf16 = jax.jit(lambda x: native.conv_general_dilated(x, kb, (1, 1), "SAME",
                                                       dimension_numbers=NHWC)).lower(xb)
  assert "cnnrnn_conv2d" not in bf16.as_text()


def test_conv_module_has_flax_parameters_and_outputs():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 3), np.float32))
  mine, ref = cnn.Conv(16, (3, 3), padding=1), nn.Conv(16, (3, 3), padding=1)
  variables = ref.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, mine.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
  with native.override(True):
    assert _rel(mine.apply(variables, x), ref.apply(variables, x)) < 1e-6
    assert "cnnrnn_conv2d_fwd" in jax.jit(lambda x: mine.apply(variables, x)).lower(x).as_text()


def _bn_loss_and_grads(module, variables, x):
  def loss(params, x):
    y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              use_running_average=False, mutable=["batch_stats"])
    weights = jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape) / y.size
    return jnp.sum(jnp.sin(y) * weights), (y, updates["batch_stats"])

  (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      variables["params"], x)
  return y, stats, grads


@pytest.mark.parametrize("shape,offset", [((8, 6, 6, 16), 0.0), ((4, 5, 5, 20), 5.0), ((64, 24), -3.0)])
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
  with native.override(True):
    out = _bn_loss_and_grads(mine, variables, x)
    hlo = jax.jit(lambda x: mine.apply(variables, x, use_running_average=False,
                                       mutable=["batch_stats"])).lower(x).as_text()
    assert "cnnrnn_channel_sums" in hlo
  out_ref = _bn_loss_and_grads(ref, variables, x)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out_ref)):
    assert _rel(a, b) < 2e-5
  # Without the native kernels (this process has 8 devices), the jax.numpy path agrees too.
  for a, b in zip(jax.tree.leaves(_bn_loss_and_grads(mine, variables, x)), jax.tree.leaves(out_ref)):
    assert _rel(a, b) < 2e-5
  # Evaluation uses the running statistics, as Flax.
  assert _rel(mine.apply(variables, x, use_running_average=True),
              ref.apply(variables, x, use_running_average=True)) < 1e-6


def test_batch_norm_statistics_are_accurate_for_a_large_mean():
  # mean(x**2) - mean(x)**2 in float32 loses the variance when |mean| >> std; the native
  # statistics accumulate in float64.
  rng = np.random.default_rng(0)
  x64 = rng.standard_normal((256, 8, 8, 16)) * 0.01 + 100.0
  x = jnp.asarray(x64, jnp.float32)
  bn = cnn.BatchNorm(momentum=0.0)
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  with native.override(True):
    _, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  var = np.asarray(x, np.float64).reshape(-1, 16).var(0)
  np.testing.assert_allclose(updates["batch_stats"]["var"], var, rtol=1e-4)


def test_disabled_by_environment_variable():
  code = ("import jax, jax.numpy as jnp; from cnnrnn.nn import native; "
          "ok, why = native.available(); assert not ok and 'CNNRNN_NATIVE' in why, why; "
          "x = jnp.ones((1, 6, 6, 4)); k = jnp.ones((3, 3, 4, 16)); "
          "t = jax.jit(lambda x: native.conv_general_dilated(x, k, (1, 1), 'SAME', "
          "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))).lower(x).as_text(); "
          "assert 'cnnrnn_conv2d' not in t")
  env = dict(os.environ, CNNRNN_NATIVE="0", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_a_failing_compiler_falls_back_to_xla(tmp_path):
  # A fresh cache and a "compiler" that fails: the kernels are unavailable, with the reason,
  # and a model still runs (on XLA's operations).
  code = ("import jax, jax.numpy as jnp; from cnnrnn import nn as cnn; from cnnrnn.nn import native; "
          "ok, why = native.available(); assert not ok and 'failed' in why, why; "
          "m = cnn.ConvBN(16, 3, 1); x = jnp.ones((2, 8, 8, 3)); v = m.init(jax.random.key(0), x, train=False); "
          "y, _ = m.apply(v, x, train=True, mutable=['batch_stats']); assert y.shape == (2, 8, 8, 16)")
  env = dict(os.environ, CXX="false", CNNRNN_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_several_devices_keep_xla_operations_unless_overridden():
  # This process has 8 (fake) CPU devices. A custom call is opaque to the SPMD partitioner,
  # so by default the model zoo's convolutions and BatchNorm stay XLA's.
  assert jax.device_count() > 1
  x = jnp.ones((4, 8, 8, 3))
  module = cnn.ConvBN(16, 3, 1)
  variables = module.init(jax.random.key(0), x, train=False)
  lower = lambda: jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
                          ).lower(variables, x).as_text()
  assert "cnnrnn_" not in lower()
  with native.override(True):
    text = lower()
    assert "cnnrnn_conv2d_fwd" in text and "cnnrnn_channel_sums" in text
    with native.override(False):
      assert "cnnrnn_" not in lower()


@pytest.mark.parametrize("name", ["cifar_resnet20", "lenet5"])
def test_model_training_step_equals_xla(name):
  model = models.create(name, num_classes=10)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((8, 32, 32, 3 if name != "lenet5" else 1), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 8))
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params, x):
    logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                  mutable=["batch_stats"])
    return (-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean(),
            updates)

  step = lambda: jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"], x)
  with native.override(True):
    text = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(variables["params"], x).as_text()
    assert "cnnrnn_conv2d_dw" in text
    (loss_native, stats_native), grads_native = step()
  (loss_xla, stats_xla), grads_xla = step()  # XLA's (8 devices, no override)
  assert _rel(loss_native, loss_xla) < 1e-5
  for a, b in zip(jax.tree.leaves(stats_native), jax.tree.leaves(stats_xla)):
    assert _rel(a, b) < 1e-5
  # Gradients in L2 norm: float32 rounding differences in the forward pass can flip a ReLU
  # whose input is within ~1e-7 of zero, which changes single gradient entries by O(1). Seen
  # here for cifar_resnet20: one of the 65,536 ReLU outputs of stage2_block2 flipped (its
  # input: 4e-7), and that block's kernel gradients moved by 5e-3 in the max norm, while each
  # kernel alone equals XLA's to 1e-5 (the tests above; both are within 1e-6 of float64).
  for a, b in zip(jax.tree.leaves(grads_native), jax.tree.leaves(grads_xla)):
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-3


# ----------------------------------------------------------------------------- LSTM loops


def _lstm_inputs(t, b, h, seed=0):
  k = jax.random.split(jax.random.key(seed), 8)
  kernel = 0.3 * jax.random.normal(k[0], (h, 4 * h))
  bias = 0.3 * jax.random.normal(k[1], (4 * h,))
  c0, h0 = jax.random.normal(k[2], (b, h)), jax.random.normal(k[3], (b, h))
  xp = jax.random.normal(k[4], (t, b, 4 * h))
  cotangents = (jax.random.normal(k[5], (t, b, h)), jax.random.normal(k[6], (b, h)),
                jax.random.normal(k[7], (b, h)))
  return (kernel, bias, c0, h0, xp), cotangents


@pytest.mark.parametrize("t,b,h,lengths", [
    (7, 6, 37, [7, 3, 0, 5, 7, 1]),  # a masked tail block; frozen and empty sequences
    (5, 12, 16, None),               # one full block; 12 rows = two backward tiles + 2
    (3, 1, 70, [2]),                 # one example; five blocks
    (1, 5, 8, None),                 # a single step, half a block
])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_loop_and_its_gradients_equal_the_scan(t, b, h, lengths, reverse):
  args, (dys, dc, dh) = _lstm_inputs(t, b, h)
  lengths = jnp.full((b,), t, jnp.int32) if lengths is None else jnp.array(lengths, jnp.int32)
  mask = jnp.arange(t)[:, None] < lengths[None, :]

  def scan(kernel, bias, c0, h0, xp):  # XLA's loop: LSTMCell under the driver's custom VJP.
    return _scan_custom_vjp(cnn.LSTMCell(h), kernel, None, (c0, h0), xp, bias, mask, reverse, 1)

  def loop(kernel, bias, c0, h0, xp):
    return native.lstm(kernel, bias, c0, h0, xp, lengths, reverse)

  def loss(fn):
    def value(*args):
      (c, h_), ys = fn(*args)
      return jnp.sum(ys * dys) + jnp.sum(c * dc) + jnp.sum(h_ * dh)
    return value

  with native.override(False):
    expected = jax.jit(scan)(*args)
    expected_grads = jax.jit(jax.grad(loss(scan), argnums=range(5)))(*args)
  got = jax.jit(loop)(*args)
  got_grads = jax.jit(jax.grad(loss(loop), argnums=range(5)))(*args)
  for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
    assert _rel(a, e) < 1e-5
  for a, e in zip(got_grads, expected_grads, strict=True):
    assert _rel(a, e) < 1e-5
  # Past its length an example's output is zero, exactly.
  assert not np.any(np.asarray(got[1])[~np.asarray(mask)])
  # Each output element comes from one fixed sequence of operations, whichever thread ran it.
  again = jax.jit(jax.grad(loss(loop), argnums=range(5)))(*args)
  for a, e in zip(again, got_grads):
    np.testing.assert_array_equal(a, e)


def test_rnn_runs_lstm_loops_natively_where_they_apply():
  x = jax.random.normal(jax.random.key(0), (4, 6, 5))
  lengths = jnp.array([6, 2, 0, 4])
  module = cnn.StackedRNN(cell="lstm", hidden_size=20, num_layers=2, bidirectional=True)
  variables = module.init(jax.random.key(1), x)

  def loss(params, x):
    outputs, carries = module.apply({"params": params}, x, seq_lengths=lengths)
    return jnp.sum(outputs ** 2) + sum(jnp.sum(c) for c in jax.tree.leaves(carries))

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  with native.override(True):
    text = jax.jit(jax.grad(loss)).lower(variables["params"], x).as_text()
    # Two layers, two directions: four forward and four backward loops.
    assert text.count("cnnrnn_lstm_fwd") == 4 and text.count("cnnrnn_lstm_bwd") == 4
    value, grads = grad(variables["params"], x)
  with native.override(False):
    assert "cnnrnn_lstm" not in jax.jit(jax.grad(loss)).lower(variables["params"], x).as_text()
    value_xla, grads_xla = grad(variables["params"], x)
  assert _rel(value, value_xla) < 1e-5
  for a, e in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_xla), strict=True):
    assert _rel(a, e) < 1e-5


def test_other_cells_and_dtypes_keep_the_scan():
  x = jnp.ones((2, 3, 4))

  class SquashedLSTM(cnn.LSTMCell):  # Its own step: the driver must not bypass it.
    def step(self, rdot, carry, xp):
      (c, h), y = super().step(rdot, carry, xp)
      return (c, jnp.tanh(h)), jnp.tanh(y)

  with native.override(True):
    for cell in (cnn.GRUCell(8), cnn.LSTMCell(8, dtype=jnp.bfloat16), SquashedLSTM(8)):
      rnn = cnn.RNN(cell)
      variables = rnn.init(jax.random.key(0), x)
      assert "cnnrnn_lstm" not in jax.jit(rnn.apply).lower(variables, x).as_text()
    rnn = cnn.RNN(cnn.LSTMCell(8))
    variables = rnn.init(jax.random.key(0), x)
    assert "cnnrnn_lstm_fwd" in jax.jit(rnn.apply).lower(variables, x).as_text()


@pytest.mark.parametrize("vocab,features,ids", [
    (50, 7, [[3, 5, 3, -1, 49], [0, -50, 7, 3, 2]]),  # repeats and negative ids
    (40, 33, [[3, 40, -41, 5], [100, 0, 0, 0]]),      # out of range: NaN rows, no gradient
    (3000, 4, [[2999, 1, 2999]]),                     # several ~1 MB chunks of the table
])
def test_take_rows_and_its_gradient_equal_jnp_take(vocab, features, ids):
  table = jax.random.normal(jax.random.key(0), (vocab, features))
  ids = jnp.array(ids)
  r = jax.random.normal(jax.random.key(1), (*ids.shape, features))

  def loss(table, take):
    return jnp.sum(jnp.nan_to_num(take(table, ids), nan=0.0) * r)

  with native.override(True):
    text = jax.jit(jax.grad(loss), static_argnums=1).lower(table, native.take_rows).as_text()
    assert "cnnrnn_rows_grad" in text
    value = native.take_rows(table, ids)
    grad = jax.jit(jax.grad(loss), static_argnums=1)(table, native.take_rows)
  np.testing.assert_array_equal(value, jnp.take(table, ids, axis=0))
  expected = jax.grad(loss)(table, lambda t, i: jnp.take(t, i, axis=0))
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(expected).sum()) > 0


def test_rnn_reads_its_embedding_with_take_rows():
  ids = jnp.array([[1, 4, 4, 0], [2, 3, 1, 1]])
  module = cnn.RNN(cnn.GRUCell(6))
  table = jax.random.normal(jax.random.key(0), (30, 5))  # V >= B*T: gather, then project
  params = module.init(jax.random.key(1), ids, embedding=table)["params"]

  def loss(table):
    return jnp.sum(module.apply({"params": params}, ids, embedding=table) ** 2)

  with native.override(True):
    assert "cnnrnn_rows_grad" in jax.jit(jax.grad(loss)).lower(table).as_text()
    grad = jax.grad(loss)(table)
  with native.override(False):
    assert "cnnrnn_rows_grad" not in jax.jit(jax.grad(loss)).lower(table).as_text()
    expected = jax.grad(loss)(table)
  assert _rel(grad, expected) < 1e-6


def test_rnn_lm_with_dropout_reads_its_embedding_with_take_rows():
  model = models.create("rnn_lm", vocab_size=40, hidden_size=8, num_layers=1, cell="gru",
                        dropout=0.5)
  tokens = jnp.array([[1, 5, 5, 39], [0, 2, 7, 7]])
  params = model.init(jax.random.key(0), tokens)["params"]

  def loss(params):
    logits, _ = model.apply({"params": params}, tokens, train=True,
                            rngs={"dropout": jax.random.key(1)})
    return jnp.mean(logits ** 2)

  with native.override(True):
    assert "cnnrnn_rows_grad" in jax.jit(jax.grad(loss)).lower(params).as_text()
    value, grads = jax.value_and_grad(loss)(params)
  with native.override(False):
    value_xla, grads_xla = jax.value_and_grad(loss)(params)
  assert _rel(value, value_xla) < 1e-6
  for a, e in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_xla), strict=True):
    assert _rel(a, e) < 1e-5
