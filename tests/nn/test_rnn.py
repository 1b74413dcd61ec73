"""Cells against their equations, the scan driver against a Python loop and against
`flax.linen.RNN`, lengths, carries, and the fast path (its JVP rule) against Flax's generic
scan differentiated by plain autodiff, in forward and reverse mode and to second order."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import nn as cnn

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
@pytest.mark.slow
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
@pytest.mark.slow
def test_padding_never_changes_valid_outputs(spec, reverse):
  rnn = cnn.RNN(_cell(spec), return_carry=True, reverse=reverse)
  x = _inputs()
  lengths = jnp.array([T, 2, 4])
  variables = _init(rnn, x)
  carry, out = rnn.apply(variables, x, seq_lengths=lengths)
  garbage = x + 100 * (jnp.arange(T)[None, :, None] >= lengths[:, None, None])
  carry2, out2 = rnn.apply(variables, garbage, seq_lengths=lengths)
  _assert_tree_close(carry, carry2, rtol=1e-6, atol=1e-6)
  valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]  # Padding stays at the end.
  np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(out2)[valid], rtol=1e-6,
                             atol=1e-6)
  for b, n in enumerate(np.asarray(lengths)):  # Each example alone, cut to its length.
    c_b, o_b = rnn.apply(variables, x[b:b + 1, :n])
    np.testing.assert_allclose(out[b:b + 1, :n], o_b, rtol=1e-5, atol=1e-6)
    _assert_tree_close(jax.tree.map(lambda a, b=b: a[b:b + 1], carry), c_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["lstm", "gru_cho"])
@pytest.mark.slow
def test_reverse_with_lengths_is_within_length(spec):
  rnn = cnn.RNN(_cell(spec), return_carry=True)
  x = _inputs()
  lengths = np.array([T, 3, 1])
  variables = _init(rnn, x)
  carry, out = rnn.apply(variables, x, seq_lengths=jnp.asarray(lengths), reverse=True,
                         keep_order=True)
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


@pytest.mark.parametrize("spec,reverse,lengths,unroll,second_order", [
    ("lstm", True, (T, 3, 1), 1, True), ("gru", True, (T, 2, 0), 1, True),
    ("gru_cho_rbias", False, (T, 2, 0), 2, True), ("simple", False, None, 2, False),
    ("lstm_rbias", False, (T, 3, 0), 1, False), ("lstm_nobias", True, None, 1, False),
    ("simple_relu", True, (T, 3, 1), 1, False), ("gru_cho", True, (T, 3, 1), 1, False),
])
@pytest.mark.slow
def test_fast_path_derivatives_equal_autodiff(spec, reverse, lengths, unroll, second_order):
  """The fast path's JVP rule against Flax's scan under plain autodiff: gradients (JAX's
  transpose of the rule), forward-mode JVPs and Hessian-vector products."""
  cell = _cell(spec)
  x = _inputs()
  variables = _init(cnn.RNN(cell), x)
  carry0 = jax.tree.map(lambda c: 0.5 * jnp.ones_like(c), cell.initialize_carry(None, (B, F)))
  seq_lengths = None if lengths is None else jnp.asarray(lengths)
  weights = jax.random.normal(jax.random.key(3), (B, T, H))

  def loss(variables, x, carry0, fast_path):
    rnn = cnn.RNN(cell, reverse=reverse, return_carry=True, fast_path=fast_path, unroll=unroll)
    carry, out = rnn.apply(variables, x, initial_carry=carry0, seq_lengths=seq_lengths)
    valid = (jnp.ones((B, T)) if lengths is None
             else jnp.arange(T)[None, :] < seq_lengths[:, None])[:, :, None]
    return (jnp.sum(weights * jnp.where(valid, out, 0.0) ** 2)
            + sum(jnp.sum(c ** 3) for c in jax.tree.leaves(carry)))

  args = (variables, x, carry0)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  expected = grad(*args, False)
  _assert_tree_close(grad(*args, True), expected, rtol=1e-4, atol=1e-5)
  jvp = jax.jit(lambda fast, *t: jax.jvp(lambda *a: loss(*a, fast), args, t)[1],
                static_argnums=0)
  np.testing.assert_allclose(jvp(True, *expected), jvp(False, *expected), rtol=1e-4)
  if not second_order:
    return
  hvp = jax.jit(lambda fast, v: jax.jvp(lambda p: jax.grad(loss)(p, x, carry0, fast),
                                        (variables,), (v,))[1], static_argnums=0)
  _assert_tree_close(hvp(True, expected[0]), hvp(False, expected[0]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("spec", ["lstm", "gru"])
@pytest.mark.parametrize("cell_dtype,carry_dtype", [(jnp.bfloat16, jnp.float32),
                                                    (jnp.float32, jnp.bfloat16)])
@pytest.mark.slow
def test_fast_path_with_mixed_dtypes(spec, cell_dtype, carry_dtype):
  """Carry and cell dtypes differ: the JVP rule casts tangents as autodiff casts."""
  cell = cnn.make_cell(spec, H, dtype=cell_dtype)
  x = _inputs()
  variables = _init(cnn.RNN(cell), x)
  carry0 = jax.tree.map(lambda c: jnp.full(c.shape, 0.5, carry_dtype),
                        cell.initialize_carry(None, (B, F)))

  def loss(variables, fast_path):
    rnn = cnn.RNN(cell, return_carry=True, fast_path=fast_path)
    carry, out = rnn.apply(variables, x, initial_carry=carry0, seq_lengths=jnp.array([T, 2, 4]))
    assert all(c.dtype == carry_dtype for c in jax.tree.leaves(carry))
    return (jnp.sum(out.astype(jnp.float32))
            + sum(jnp.sum(c.astype(jnp.float32) ** 2) for c in jax.tree.leaves(carry)))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  _assert_tree_close(grad(variables, True), grad(variables, False), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("vocab", [5, 4 * B * T])  # Table projected, or rows gathered.
@pytest.mark.parametrize("layer", ["lstm", "gru_reverse", "bidirectional", "stacked"])
@pytest.mark.slow
def test_embedding_input_equals_embedded_inputs(vocab, layer):
  """rnn(ids, embedding=E) == rnn(E[ids]): outputs, carry and every gradient, with lengths."""
  ids = jax.random.randint(jax.random.key(0), (B, T), 0, vocab)
  table = jax.random.normal(jax.random.key(1), (vocab, F))
  lengths = jnp.array([T, 4, 1])
  width = H
  if layer == "stacked":
    rnn, width = cnn.StackedRNN(cell="lstm", hidden_size=H, num_layers=2, bidirectional=True), 2 * H
    run = lambda v, x, **kw: rnn.apply(v, x, seq_lengths=lengths, return_carry=True, **kw)
  else:
    make = cnn.GRUCell if layer == "gru_reverse" else cnn.LSTMCell
    rnn = cnn.RNN(make(H), reverse=layer == "gru_reverse")
    if layer == "bidirectional":
      rnn, width = cnn.Bidirectional(cnn.RNN(make(H)), cnn.RNN(make(H))), 2 * H
    run = lambda v, x, **kw: rnn.apply(v, x, seq_lengths=lengths, return_carry=True, **kw)
  variables = _init(rnn, table[ids])
  weights = jax.random.normal(jax.random.key(3), (B, T, width))

  valid = (jnp.arange(T)[None, :] < lengths[:, None])[:, :, None]

  def loss(variables, table, use_table):
    carry, out = run(variables, ids, embedding=table) if use_table else run(variables, table[ids])
    out = jnp.where(valid, out, 0.0)
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


@pytest.mark.slow
def test_bidirectional_is_forward_and_reversed():
  x = _inputs()
  lengths = jnp.array([T, 4, 2])
  bi = cnn.Bidirectional(cnn.RNN(cnn.LSTMCell(H)), cnn.RNN(cnn.LSTMCell(H)), return_carry=True)
  variables = _init(bi, x)
  (c_f, c_b), out = bi.apply(variables, x, seq_lengths=lengths)
  assert out.shape == (B, T, 2 * H)
  rnn = cnn.RNN(cnn.LSTMCell(H), return_carry=True)
  p = variables["params"]
  c_f2, o_f = rnn.apply({"params": p["forward_rnn"]}, x, seq_lengths=lengths)
  c_b2, o_b = rnn.apply({"params": p["backward_rnn"]}, x, seq_lengths=lengths, reverse=True,
                        keep_order=True)
  np.testing.assert_allclose(out, jnp.concatenate([o_f, o_b], -1), rtol=1e-6, atol=1e-6)
  _assert_tree_close((c_f, c_b), (c_f2, c_b2), rtol=1e-6, atol=1e-6)
  # Flax's own Bidirectional drives cnnrnn's RNN the same way.
  flax_bi = nn.Bidirectional(cnn.RNN(cnn.LSTMCell(H)), cnn.RNN(cnn.LSTMCell(H)),
                             return_carry=True)
  (fc_f, fc_b), f_out = flax_bi.apply(variables, x, seq_lengths=lengths)
  np.testing.assert_allclose(f_out, out, rtol=1e-6, atol=1e-6)
  _assert_tree_close((fc_f, fc_b), (c_f, c_b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.slow
def test_stacked_rnn_carry_and_dropout(bidirectional):
  x = _inputs()
  stack = cnn.StackedRNN(cell="gru", hidden_size=H, num_layers=2, bidirectional=bidirectional,
                         dropout=0.5)
  variables = stack.init(jax.random.key(0), x)
  names = set(variables["params"])
  assert names == {"layer0", "layer1"}
  carry, out = stack.apply(variables, x, return_carry=True)
  d = 2 if bidirectional else 1
  assert out.shape == (B, T, d * H)
  assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, stack.zero_carry(B))
  out2 = stack.apply(variables, x, initial_carry=stack.zero_carry(B))
  np.testing.assert_allclose(out, out2, rtol=1e-6)
  train_out = stack.apply(variables, x, True, rngs={"dropout": jax.random.key(1)})
  assert np.abs(train_out - out).max() > 1e-3
  # Dropout sits between layers only: a one-layer stack is unaffected by it.
  one = stack.clone(num_layers=1)
  v1 = one.init(jax.random.key(0), x)
  np.testing.assert_allclose(one.apply(v1, x, train=True, rngs={"dropout": jax.random.key(1)}),
                             one.apply(v1, x), rtol=1e-6)


def test_hidden_state_perturbation_is_zero_and_not_in_init():
  x = _inputs()
  rnn = cnn.RNN(cnn.LSTMCell(H))
  variables = rnn.init(jax.random.key(0), x)
  assert set(variables) == {"params"}
  out, state = rnn.apply(variables, x, mutable=["perturbations"])
  assert state["perturbations"]["hidden_states"].shape == (B, T, H)
  np.testing.assert_allclose(out, rnn.apply(variables, x), rtol=1e-6)


@pytest.mark.slow
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


FLAX_CELLS = {
    "LSTMCell": lambda: nn.LSTMCell(H), "OptimizedLSTMCell": lambda: nn.OptimizedLSTMCell(H),
    "GRUCell": lambda: nn.GRUCell(H), "SimpleCell": lambda: nn.SimpleCell(H),
    "MGUCell": lambda: nn.MGUCell(H),
}


_DRIVER_OPTIONS = [
    {}, {"reverse": True}, {"reverse": True, "keep_order": True}, {"time_major": True},
    {"lengths": (T, 3, 1)}, {"lengths": (T, 3, 1), "reverse": True, "keep_order": True},
]


# Every driver option with a tuple carry (LSTMCell) and a single one (GRUCell); the other
# cells (the same driver code, other carries) without options and with all of them at once.
@pytest.mark.parametrize("name,options", [
    *[(name, options) for name in ("GRUCell", "LSTMCell") for options in _DRIVER_OPTIONS],
    *[(name, options) for name in sorted(set(FLAX_CELLS) - {"GRUCell", "LSTMCell"})
      for options in (_DRIVER_OPTIONS[0], _DRIVER_OPTIONS[-1])]])
@pytest.mark.slow
def test_flax_cells_match_flax_rnn(name, options):
  """Flax's own cells in cnnrnn's RNN: every output and the final carry equal
  `flax.linen.RNN`'s, with the same arguments; gradients too. (A length of 0 differs on
  purpose: ours returns the initial carry, Flax's the carry of the last step.)"""
  options = dict(options)
  lengths = options.pop("lengths", None)
  seq_lengths = None if lengths is None else jnp.asarray(lengths)
  x = _inputs()
  if options.get("time_major"):
    x = jnp.swapaxes(x, 0, 1)
  ours = cnn.RNN(FLAX_CELLS[name](), return_carry=True, **options)
  theirs = nn.RNN(FLAX_CELLS[name](), return_carry=True, **options)
  variables = theirs.init(jax.random.key(0), x, seq_lengths=seq_lengths)
  assert jax.tree.structure(ours.init(jax.random.key(0), x, seq_lengths=seq_lengths)) == (
      jax.tree.structure(variables))
  loss = lambda m: lambda v: sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(
      m.apply(v, x, seq_lengths=seq_lengths)))

  @jax.jit  # One compilation for both models' outputs and gradients.
  def both(variables):
    return [(m.apply(variables, x, seq_lengths=seq_lengths), jax.grad(loss(m))(variables))
            for m in (ours, theirs)]

  (out_ours, grad_ours), (out_theirs, grad_theirs) = both(variables)
  _assert_tree_close(out_ours, out_theirs, rtol=1e-6, atol=1e-6)
  _assert_tree_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-6)


def test_length_zero_returns_the_initial_carry():
  x = _inputs()
  for fast_path in (True, False):
    rnn = cnn.RNN(cnn.GRUCell(H), return_carry=True, fast_path=fast_path)
    variables = _init(rnn, x)
    carry0 = jnp.full((B, H), 0.25)
    carry, _ = rnn.apply(variables, x, initial_carry=carry0, seq_lengths=jnp.array([T, 0, 2]))
    np.testing.assert_array_equal(carry[1], carry0[1])
    assert np.abs(np.asarray(carry[0] - carry0[0])).max() > 1e-3


@pytest.mark.parametrize("spec", ["lstm", "gru", "gru_cho"])
def test_cnnrnn_cells_match_flax_rnn_on_the_fast_path(spec):
  """Our cells in Flax's driver and in ours (fast path) give the same function."""
  x = _inputs()
  lengths = jnp.array([T, 3, 1])
  ours = cnn.RNN(_cell(spec), return_carry=True, reverse=True, keep_order=True)
  variables = _init(ours, x)
  theirs = nn.RNN(_cell(spec), return_carry=True, reverse=True, keep_order=True)
  _assert_tree_close(ours.apply(variables, x, seq_lengths=lengths),
                     theirs.apply(variables, x, seq_lengths=lengths), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fast_path_under_checkpoint_with_lengths():
  """jax.checkpoint around the fast path's JVP rule (no constant of the enclosing trace is
  closed over by the rule)."""
  rnn = cnn.RNN(cnn.GRUCell(H))
  x = _inputs()
  variables = _init(rnn, x)
  lengths = jnp.array([T, 3, 1])
  loss = lambda fast: lambda v: jnp.sum(cnn.RNN(cnn.GRUCell(H), fast_path=fast).apply(
      v, x, seq_lengths=lengths, return_carry=True)[0] ** 2)
  _assert_tree_close(jax.grad(jax.checkpoint(loss(True)))(variables),
                     jax.grad(loss(False))(variables), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["lstm", "gru_cho"])
@pytest.mark.slow
def test_fast_path_in_shard_map_equals_the_whole_batch(spec):
  """Inside shard_map the fast path types its loop like JAX's own operations (the zero
  initial carry varies over the batch axis as the inputs do): per-shard outputs are the
  rows of the whole batch's, and the gradient w.r.t. the replicated parameters is the whole
  batch's (JAX sums it over the shards)."""
  devices = jax.devices()
  if len(devices) < 4:
    pytest.skip("needs 4 devices (tests/conftest.py fakes 8 CPU devices)")
  mesh = jax.sharding.Mesh(np.asarray(devices[:4]), ("data",))
  spec_ = jax.sharding.PartitionSpec
  rnn = cnn.RNN(_cell(spec))
  x = _inputs(shape=(8, T, F))
  params = _init(rnn, x)["params"]
  loss = lambda p, x: jnp.sum(jnp.sin(rnn.apply({"params": p}, x)))
  apply = lambda p, x: rnn.apply({"params": p}, x)
  sharded = lambda f, out: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(spec_(), spec_("data")),
                                                 out_specs=out))
  np.testing.assert_allclose(sharded(apply, spec_("data"))(params, x), apply(params, x),
                             rtol=1e-5, atol=1e-6)
  for got, want in zip(jax.tree.leaves(sharded(jax.grad(loss), spec_())(params, x)),
                       jax.tree.leaves(jax.grad(loss)(params, x)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
