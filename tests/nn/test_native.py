"""Native CPU kernels of the recurrent layers: LSTM loops and the embedding gradient.

(The convolution and BatchNorm kernels are tested in tests/accel.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn import nn as cnn
from cnnrnn.nn import native
from cnnrnn.nn.recurrent import _scan_custom_vjp

pytestmark = pytest.mark.skipif(not native.available()[0],
                                reason=f"native kernels unavailable: {native.available()[1]}")


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))



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
