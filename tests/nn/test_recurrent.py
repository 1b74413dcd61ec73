"""Cells against their equations, the scan driver against a Python loop, lengths, carries,
and the custom VJP against plain autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import nn as cnn
from cnnrnn.nn import recurrent

B, T, F, H = 3, 6, 4, 5

CELL_SPECS = {
    "simple": ("simple", {}),
    "simple_relu": ("simple", {"nonlinearity": "relu", "recurrent_bias": True}),
    "lstm": ("lstm", {}),
    "lstm_rbias": ("lstm", {"recurrent_bias": True}),
    "gru": ("gru", {}),
    "gru_cho": ("gru", {"reset_after": False}),
    "gru_cho_rbias": ("gru", {"reset_after": False, "recurrent_bias": True}),
    "lstm_nobias": ("lstm", {"use_bias": False}),
}


def _cell(spec):
  name, kwargs = CELL_SPECS[spec]
  return cnn.make_cell(name, H, **kwargs)


def _inputs(seed=0, shape=(B, T, F)):
  return jax.random.normal(jax.random.key(seed), shape)


def _init(rnn, x, seed=1, **kwargs):
  variables = rnn.init(jax.random.key(seed), x, **kwargs)
  # Random (not zero) biases so that every bias term is exercised.
  return jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(7), p.shape),
                      variables)


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _reference_step(spec, p, carry, x):
  """The cell equations in numpy, straight from the docstrings."""
  wx, wh = np.asarray(p["input"]["kernel"]), np.asarray(p["recurrent"]["kernel"])
  bx = np.asarray(p["input"].get("bias", np.zeros(wx.shape[1])))
  bh = np.asarray(p["recurrent"].get("bias", np.zeros(wh.shape[1])))
  name, kwargs = CELL_SPECS[spec]
  if name == "simple":
    act = np.tanh if kwargs.get("nonlinearity", "tanh") == "tanh" else (lambda z: np.maximum(z, 0))
    h = act(x @ wx + bx + carry @ wh + bh)
    return h, h
  if name == "lstm":
    c, h = carry
    i, f, g, o = np.split(x @ wx + bx + h @ wh + bh, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    return (c, h), h
  h = carry
  xr, xz, xn = np.split(x @ wx + bx, 3, axis=-1)
  ur, uz, un = np.split(wh, 3, axis=-1)
  br, bz, bn = np.split(bh, 3)
  r = _sigmoid(xr + h @ ur + br)
  z = _sigmoid(xz + h @ uz + bz)
  if kwargs.get("reset_after", True):
    n = np.tanh(xn + r * (h @ un + bn))
  else:
    n = np.tanh(xn + (r * h) @ un + bn)
  h = (1 - z) * n + z * h
  return h, h


def _assert_tree_close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


@pytest.mark.parametrize("spec", sorted(CELL_SPECS))
def test_scan_equals_python_loop_and_equations(spec):
  cell = _cell(spec)
  rnn = cnn.RNN(cell, return_carry=True)
  x = _inputs()
  variables = _init(rnn, x)
  carry, outputs = rnn.apply(variables, x)
  assert outputs.shape == (B, T, H)

  cell_vars = {"params": variables["params"]["cell"]}
  loop_carry = cell.initialize_carry(None, (B, F))
  ref_carry = jax.tree.map(np.asarray, loop_carry)
  for t in range(T):
    loop_carry, y = cell.apply(cell_vars, loop_carry, x[:, t])
    ref_carry, y_ref = _reference_step(spec, cell_vars["params"], ref_carry, np.asarray(x[:, t]))
    np.testing.assert_allclose(outputs[:, t], y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[:, t], y_ref, rtol=1e-5, atol=1e-5)
  _assert_tree_close(carry, loop_carry, rtol=1e-5, atol=1e-6)


def test_parameter_layout():
  x = _inputs()
  shapes = lambda cell: jax.tree.map(jnp.shape, cnn.RNN(cell).init(jax.random.key(0), x))
  assert shapes(cnn.LSTMCell(H))["params"]["cell"] == {
      "input": {"kernel": (F, 4 * H), "bias": (4 * H,)}, "recurrent": {"kernel": (H, 4 * H)}}
  assert shapes(cnn.GRUCell(H))["params"]["cell"]["recurrent"] == {
      "kernel": (H, 3 * H), "bias": (3 * H,)}
  assert "bias" not in shapes(cnn.GRUCell(H, reset_after=False))["params"]["cell"]["recurrent"]
  assert shapes(cnn.SimpleRNNCell(H, use_bias=False))["params"]["cell"] == {
      "input": {"kernel": (F, H)}, "recurrent": {"kernel": (H, H)}}


def test_lstm_unit_forget_bias():
  bias = lambda cell: cnn.RNN(cell).init(jax.random.key(0), _inputs())["params"]["cell"][
      "input"]["bias"]
  np.testing.assert_array_equal(bias(cnn.LSTMCell(H)),
                                np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])
  np.testing.assert_array_equal(bias(cnn.LSTMCell(H, unit_forget_bias=False)), np.zeros(4 * H))


def test_gru_forms_differ():
  x = _inputs()
  after = cnn.RNN(cnn.GRUCell(H, reset_after=True, recurrent_bias=True))
  before = cnn.RNN(cnn.GRUCell(H, reset_after=False, recurrent_bias=True))
  variables = _init(after, x)  # Same parameter tree for both forms.
  assert jax.tree.structure(variables) == jax.tree.structure(before.init(jax.random.key(1), x))
  assert np.abs(after.apply(variables, x) - before.apply(variables, x)).max() > 1e-3


def test_cell_interface():
  for spec in CELL_SPECS:
    cell = _cell(spec)
    assert cell.num_feature_axes == 1
    carry = cell.initialize_carry(jax.random.key(0), (2, 7, F))
    assert cell.hidden_state(carry).shape == (2, 7, H)
  with pytest.raises(ValueError, match="allowed: gru, lstm, simple"):
    cnn.make_cell("elman", H)


@pytest.mark.parametrize("spec", ["simple", "lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_padding_never_changes_valid_outputs(spec, reverse):
  rnn = cnn.RNN(_cell(spec), return_carry=True, reverse=reverse)
  x = _inputs()
  lengths = jnp.array([T, 2, 4])
  variables = _init(rnn, x)
  carry, out = rnn.apply(variables, x, seq_lengths=lengths)
  garbage = x + 100 * (jnp.arange(T)[None, :, None] >= lengths[:, None, None])
  carry2, out2 = rnn.apply(variables, garbage, seq_lengths=lengths)
  _assert_tree_close(carry, carry2, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out, out2, rtol=1e-6, atol=1e-6)
  valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
  assert np.all(np.asarray(out)[~valid] == 0)
  for b, n in enumerate(np.asarray(lengths)):  # Each example alone, cut to its length.
    c_b, o_b = rnn.apply(variables, x[b:b + 1, :n])
    np.testing.assert_allclose(out[b:b + 1, :n], o_b, rtol=1e-5, atol=1e-6)
    _assert_tree_close(jax.tree.map(lambda a, b=b: a[b:b + 1], carry), c_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["lstm", "gru_cho"])
def test_reverse_with_lengths_is_within_length(spec):
  rnn = cnn.RNN(_cell(spec), return_carry=True)
  x = _inputs()
  lengths = np.array([T, 3, 1])
  variables = _init(rnn, x)
  carry, out = rnn.apply(variables, x, seq_lengths=jnp.asarray(lengths), reverse=True)
  for b, n in enumerate(lengths):
    c_b, o_b = rnn.apply(variables, x[b:b + 1, :n][:, ::-1])  # Forward over the flipped prefix.
    np.testing.assert_allclose(out[b:b + 1, :n], o_b[:, ::-1], rtol=1e-5, atol=1e-6)
    _assert_tree_close(jax.tree.map(lambda a, b=b: a[b:b + 1], carry), c_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["simple", "lstm", "gru"])
def test_truncated_bptt_halves_equal_one_run(spec):
  rnn = cnn.RNN(_cell(spec), return_carry=True)
  x = _inputs()
  variables = _init(rnn, x)
  carry, out = rnn.apply(variables, x)
  carry1, out1 = rnn.apply(variables, x[:, :T // 2])
  carry2, out2 = rnn.apply(variables, x[:, T // 2:], initial_carry=carry1)
  np.testing.assert_allclose(out, jnp.concatenate([out1, out2], axis=1), rtol=1e-6, atol=1e-6)
  _assert_tree_close(carry, carry2, rtol=1e-6, atol=1e-6)


class _ReplayedLSTMCell(cnn.LSTMCell):
  """An LSTM that overrides `step`: the driver replays it instead of using its backward rule."""

  @nn.nowrap
  def step(self, rdot, carry, xp):
    return super().step(rdot, carry, xp)


def test_which_cells_use_a_backward_rule():
  for spec in CELL_SPECS:
    assert recurrent._has_backward_rule(_cell(spec)), spec
  assert not recurrent._has_backward_rule(_ReplayedLSTMCell(H))


@pytest.mark.parametrize("spec,reverse,lengths,unrolls", [
    *[(spec, True, (T, 3, 1), (1,)) for spec in sorted(CELL_SPECS)],
    *[(spec, False, (T, 2, 0), (1,)) for spec in ("simple", "lstm", "gru")],
    ("lstm", False, None, (1, 2)), ("gru_cho", False, (T, 2, 0), (1, 2)),
    ("replayed_lstm", True, (T, 3, 1), (1, 2)), ("replayed_lstm", False, None, (1,)),
])
def test_custom_vjp_gradient_equals_autodiff(spec, reverse, lengths, unrolls):
  """Each cell's hand-written backward rule, and the replay of a cell without one."""
  cell = _ReplayedLSTMCell(H) if spec == "replayed_lstm" else _cell(spec)
  x = _inputs()
  variables = _init(cnn.RNN(cell), x)
  carry0 = jax.tree.map(lambda c: 0.5 * jnp.ones_like(c), cell.initialize_carry(None, (B, F)))
  seq_lengths = None if lengths is None else jnp.asarray(lengths)
  weights = jax.random.normal(jax.random.key(3), (B, T, H))

  def loss(variables, x, carry0, custom_vjp, unroll):
    rnn = cnn.RNN(cell, reverse=reverse, return_carry=True, custom_vjp=custom_vjp,
                  unroll=unroll)
    carry, out = rnn.apply(variables, x, initial_carry=carry0, seq_lengths=seq_lengths)
    return jnp.sum(weights * out) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(carry))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4))
  expected = grad(variables, x, carry0, False, 1)
  for unroll in unrolls:
    _assert_tree_close(grad(variables, x, carry0, True, unroll), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["lstm", "gru"])
@pytest.mark.parametrize("cell_dtype,carry_dtype", [(jnp.bfloat16, jnp.float32),
                                                    (jnp.float32, jnp.bfloat16)])
def test_custom_vjp_with_mixed_dtypes(spec, cell_dtype, carry_dtype):
  """Carry and cell dtypes differ: the backward rules get cotangents cast as autodiff casts."""
  cell = cnn.make_cell(spec, H, dtype=cell_dtype)
  x = _inputs()
  variables = _init(cnn.RNN(cell), x)
  carry0 = jax.tree.map(lambda c: jnp.full(c.shape, 0.5, carry_dtype),
                        cell.initialize_carry(None, (B, F)))

  def loss(variables, custom_vjp):
    rnn = cnn.RNN(cell, return_carry=True, custom_vjp=custom_vjp)
    carry, out = rnn.apply(variables, x, initial_carry=carry0, seq_lengths=jnp.array([T, 2, 4]))
    assert all(c.dtype == carry_dtype for c in jax.tree.leaves(carry))
    return (jnp.sum(out.astype(jnp.float32))
            + sum(jnp.sum(c.astype(jnp.float32) ** 2) for c in jax.tree.leaves(carry)))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  _assert_tree_close(grad(variables, True), grad(variables, False), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("vocab", [5, 4 * B * T])  # Table projected, or rows gathered.
@pytest.mark.parametrize("layer", ["lstm", "gru_reverse", "bidirectional", "stacked"])
def test_embedding_input_equals_embedded_inputs(vocab, layer):
  """rnn(ids, embedding=E) == rnn(E[ids]): outputs, carry and every gradient, with lengths."""
  ids = jax.random.randint(jax.random.key(0), (B, T), 0, vocab)
  table = jax.random.normal(jax.random.key(1), (vocab, F))
  lengths = jnp.array([T, 4, 1])
  width = H
  if layer == "stacked":
    rnn, width = cnn.StackedRNN(cell="lstm", hidden_size=H, num_layers=2, bidirectional=True), 2 * H
    run = lambda v, x, **kw: rnn.apply(v, x, seq_lengths=lengths, **kw)[::-1]  # (carry, out)
  else:
    make = cnn.GRUCell if layer == "gru_reverse" else cnn.LSTMCell
    rnn = cnn.RNN(make(H), reverse=layer == "gru_reverse")
    if layer == "bidirectional":
      rnn, width = cnn.Bidirectional(cnn.RNN(make(H)), cnn.RNN(make(H))), 2 * H
    run = lambda v, x, **kw: rnn.apply(v, x, seq_lengths=lengths, return_carry=True, **kw)
  variables = _init(rnn, table[ids])
  weights = jax.random.normal(jax.random.key(3), (B, T, width))

  def loss(variables, table, use_table):
    carry, out = run(variables, ids, embedding=table) if use_table else run(variables, table[ids])
    total = jnp.sum(weights * out) + sum(jnp.sum(c ** 2) for c in jax.tree.leaves(carry))
    return total, (out, carry)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
  (g_ids, (out_ids, carry_ids)), (g_ref, (out_ref, carry_ref)) = (
      grad(variables, table, True), grad(variables, table, False))
  _assert_tree_close((out_ids, carry_ids), (out_ref, carry_ref), rtol=1e-5, atol=1e-6)
  _assert_tree_close(g_ids, g_ref, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(g_ids[1])).sum() > 0  # The table does get a gradient.


def test_embedding_input_needs_integer_ids():
  rnn = cnn.RNN(cnn.LSTMCell(H))
  with pytest.raises(ValueError, match="integer ids"):
    rnn.init(jax.random.key(0), jnp.zeros((B, T)), embedding=jnp.ones((7, F)))
  with pytest.raises(ValueError, match="integer ids"):
    rnn.init(jax.random.key(0), jnp.zeros((B, T, 1), jnp.int32), embedding=jnp.ones((7, F)))


def test_unroll_and_jit_give_same_outputs():
  x = _inputs()
  variables = _init(cnn.RNN(cnn.LSTMCell(H)), x)
  ref = cnn.RNN(cnn.LSTMCell(H)).apply(variables, x)
  out = jax.jit(cnn.RNN(cnn.LSTMCell(H), unroll=4).apply)(variables, x)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_bad_inputs_raise():
  rnn = cnn.RNN(cnn.GRUCell(H))
  with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
    rnn.init(jax.random.key(0), jnp.ones((T, F)))
  with pytest.raises(ValueError, match="seq_lengths"):
    rnn.init(jax.random.key(0), _inputs(), seq_lengths=jnp.ones((B, 1), jnp.int32))
  with pytest.raises(ValueError, match="allowed: gru, lstm, simple"):
    cnn.StackedRNN(cell="rnn").init(jax.random.key(0), _inputs())


def test_bidirectional_is_forward_and_reversed():
  x = _inputs()
  lengths = jnp.array([T, 4, 2])
  bi = cnn.Bidirectional(cnn.RNN(cnn.LSTMCell(H)), cnn.RNN(cnn.LSTMCell(H)), return_carry=True)
  variables = _init(bi, x)
  (c_f, c_b), out = bi.apply(variables, x, seq_lengths=lengths)
  assert out.shape == (B, T, 2 * H)
  rnn = cnn.RNN(cnn.LSTMCell(H), return_carry=True)
  p = variables["params"]
  c_f2, o_f = rnn.apply({"params": p["forward"]}, x, seq_lengths=lengths)
  c_b2, o_b = rnn.apply({"params": p["backward"]}, x, seq_lengths=lengths, reverse=True)
  np.testing.assert_allclose(out, jnp.concatenate([o_f, o_b], -1), rtol=1e-6, atol=1e-6)
  _assert_tree_close((c_f, c_b), (c_f2, c_b2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_rnn_carry_and_dropout(bidirectional):
  x = _inputs()
  stack = cnn.StackedRNN(cell="gru", hidden_size=H, num_layers=2, bidirectional=bidirectional,
                         dropout=0.5)
  variables = stack.init(jax.random.key(0), x)
  names = set(variables["params"])
  assert names == {"layer0", "layer1"}
  out, carry = stack.apply(variables, x)
  d = 2 if bidirectional else 1
  assert out.shape == (B, T, d * H)
  assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, stack.zero_carry(B))
  out2, _ = stack.apply(variables, x, initial_carry=stack.zero_carry(B))
  np.testing.assert_allclose(out, out2, rtol=1e-6)
  train_out, _ = stack.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert np.abs(train_out - out).max() > 1e-3
  # Dropout sits between layers only: a one-layer stack is unaffected by it.
  one = stack.clone(num_layers=1)
  v1 = one.init(jax.random.key(0), x)
  np.testing.assert_allclose(one.apply(v1, x, train=True, rngs={"dropout": jax.random.key(1)})[0],
                             one.apply(v1, x)[0], rtol=1e-6)


def test_hidden_state_perturbation_is_zero_and_not_in_init():
  x = _inputs()
  rnn = cnn.RNN(cnn.LSTMCell(H))
  variables = rnn.init(jax.random.key(0), x)
  assert set(variables) == {"params"}
  out, state = rnn.apply(variables, x, mutable=["perturbations"])
  assert state["perturbations"]["hidden_states"].shape == (B, T, H)
  np.testing.assert_allclose(out, rnn.apply(variables, x), rtol=1e-6)


def test_flax_cells_interchangeable_interface():
  """Our cells follow flax.linen's cell protocol (carry, x) -> (carry, y)."""
  x = _inputs()
  ours = cnn.LSTMCell(H)
  carry = ours.initialize_carry(None, x[:, 0].shape)
  variables = ours.init(jax.random.key(0), carry, x[:, 0])
  (c, h), y = ours.apply(variables, carry, x[:, 0])
  assert c.shape == h.shape == y.shape == (B, H)
  # And flax's own driver can scan them.
  out = nn.RNN(cnn.GRUCell(H)).init_with_output(jax.random.key(0), x)[0]
  assert out.shape == (B, T, H)
