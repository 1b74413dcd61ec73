"""The LSTM time loop with acceleration on: the same function, the kernels in reverse mode.

`cnnrnn.nn.RNN(LSTMCell)` under `accel.mode("cpu_native")` computes the outputs, final carry
and gradients of the XLA path (hidden sizes that are and are not multiples of the kernels'
16-unit blocks); `grad` runs the forward and backward kernels and no XLA loop; forward mode,
Hessians (both orders), vmap, remat, shard_map and export work; what the kernels do not
compute (lengths, other cells, other dtypes) stays on the XLA loop.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import accel
from cnnrnn import nn as cnn
from cnnrnn.accel import native
from cnnrnn.accel import recurrent
from cnnrnn.train import sharding

needs_kernels = pytest.mark.skipif(not native.available()[0], reason="native kernels unavailable")


def _setup(hidden=20, batch=3, steps=6, features=5, cell=None, **rnn_kwargs):
  rnn = cnn.RNN(cell or cnn.LSTMCell(hidden), return_carry=True, **rnn_kwargs)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, steps, features), np.float32))
  variables = rnn.init(jax.random.key(0), x)
  weights = jnp.linspace(0.5, 1.5, batch * steps * hidden).reshape(batch, steps, hidden)

  def loss(params, x, **kwargs):
    carry, ys = rnn.apply({"params": params}, x, **kwargs)
    return (jnp.sum(jnp.sin(ys) * weights)
            + sum(jnp.sum(jnp.sin(c.astype(jnp.float32))) for c in jax.tree.leaves(carry)))

  return variables["params"], x, loss


def _close(a, b, tol=2e-5):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert float(jnp.linalg.norm(u - v)) <= tol * (float(jnp.linalg.norm(v)) + 1e-6)


def _on(fn):
  return jax.jit(accel.accelerate(fn, "cpu_native"))


@pytest.mark.parametrize("hidden,batch", [(20, 3), (32, 8), (7, 1)])
@pytest.mark.slow
def test_values_and_gradients_equal_xla_and_grad_runs_the_kernels(hidden, batch):
  params, x, loss = _setup(hidden, batch)
  f = jax.value_and_grad(loss, argnums=(0, 1))
  on = _on(f).lower(params, x).compile()
  _close(on(params, x), jax.jit(f)(params, x))
  if native.available()[0]:  # One device (this jit is not sharded): the kernels run.
    text = on.as_text()
    assert "cnnrnn_lstm_fwd" in text and "cnnrnn_lstm_bwd" in text
    assert " while(" not in text  # No XLA time loop left: both directions are kernels.


@pytest.mark.slow
def test_forward_mode_hessians_vmap_and_remat():
  params, x, loss = _setup()
  tangent = jax.tree.map(lambda p: jnp.cos(p) * 0.1, params)
  remat_loss = jax.checkpoint(loss)

  def transformed(p, t):
    grad_norm = lambda p: sum(jnp.sum(g * g) for g in jax.tree.leaves(jax.grad(loss)(p, x)))
    return {
        "jvp": jax.jvp(lambda p: loss(p, x), (p,), (t,)),
        "fwd_over_rev": jax.jvp(jax.grad(lambda p: loss(p, x)), (p,), (t,))[1],
        "rev_over_fwd": jax.grad(lambda p: jax.jvp(lambda p: loss(p, x), (p,), (t,))[1])(p),
        "rev_over_rev": jax.grad(grad_norm)(p),
        "jacfwd": jax.jacfwd(lambda x: loss(p, x))(x),
        "vmap": jax.vmap(loss, (None, 0))(p, jnp.stack([x, 2 * x])),
        "remat": jax.grad(remat_loss)(p, x),
    }

  on, off = _on(transformed)(params, tangent), jax.jit(transformed)(params, tangent)
  for key in on:
    _close(on[key], off[key], 1e-4)


def test_linear_transposes_of_the_tangent_and_backward_loops():
  """lstm_tangent_p and lstm_cotangent_p are each other's transposes: <T u, v> = <u, C v>,
  through jax.linear_transpose (their transpose rules), with the kernels where they run."""
  rng = np.random.default_rng(1)
  t, b, h = 4, 3, 5
  arr = lambda *s: jnp.asarray(rng.standard_normal(s, np.float32))
  w, c_in, tanh_c = arr(h, 4 * h), arr(t, b, h), jnp.tanh(arr(t, b, h))
  acts = jax.nn.sigmoid(arr(t, b, 4 * h))
  u = (arr(t, b, 4 * h), arr(b, h), arr(b, h))
  v = (arr(t, b, h), arr(b, h), arr(b, h))
  tangent = lambda *u: tuple(recurrent.lstm_tangent_p.bind(w, acts, c_in, tanh_c, *u))
  cotangent = lambda *v: tuple(recurrent.lstm_cotangent_p.bind(w, acts, c_in, tanh_c, *v))
  dot = lambda p, q: sum(jnp.vdot(a, c) for a, c in zip(p, q))
  tu, cv = jax.jit(tangent)(*u), jax.jit(cotangent)(*v)
  np.testing.assert_allclose(dot(tu, v), dot(u, cv), rtol=1e-5)
  _close(jax.jit(jax.linear_transpose(tangent, *u))(v), cv, 1e-5)
  _close(jax.jit(jax.linear_transpose(cotangent, *v))(u), tu, 1e-5)


@pytest.mark.slow
def test_what_the_kernels_do_not_compute_stays_on_the_xla_loop():
  params, x, loss = _setup()
  lengths = jnp.array([6, 2, 0], jnp.int32)
  with_lengths = lambda p, x: loss(p, x, seq_lengths=lengths)
  cases = {
      "lengths": (params, x, with_lengths),
      "gru": _setup(cell=cnn.GRUCell(20)),
      "flax cell": _setup(cell=nn.OptimizedLSTMCell(20)),
      "bfloat16": _setup(cell=cnn.LSTMCell(20, dtype=jnp.bfloat16)),
  }
  for name, (p, xs, f) in cases.items():
    g = jax.grad(f)
    assert "cnnrnn_lstm" not in str(jax.make_jaxpr(accel.accelerate(g, "cpu_native"))(p, xs)), name
    tol = 2e-2 if name == "bfloat16" else 2e-5
    _close(_on(g)(p, xs), jax.jit(g)(p, xs), tol)


@pytest.mark.slow
def test_reverse_bidirectional_and_stacked_take_the_loop():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 3), np.float32))
  layers = [cnn.RNN(cnn.LSTMCell(6), reverse=True),
            cnn.Bidirectional(cnn.RNN(cnn.LSTMCell(6)), cnn.RNN(cnn.LSTMCell(6))),
            cnn.StackedRNN(cell="lstm", hidden_size=6, num_layers=2)]
  for layer in layers:
    variables = layer.init(jax.random.key(0), x)
    loss = lambda v: jnp.sum(jnp.sin(layer.apply(v, x)))
    jaxpr = str(jax.make_jaxpr(accel.accelerate(jax.grad(loss), "cpu_native"))(variables))
    assert "cnnrnn_lstm" in jaxpr, type(layer).__name__
    _close(_on(jax.grad(loss))(variables), jax.jit(jax.grad(loss))(variables))


@needs_kernels
@pytest.mark.slow
def test_shard_map_runs_the_kernels_per_shard_and_export_is_portable():
  params, x, loss = _setup(batch=8)
  mesh = sharding.make_mesh((("data", -1),))
  spec = jax.sharding.PartitionSpec
  # As for any JAX function in shard_map, the gradient w.r.t. the replicated parameters sums
  # over the shards (one row each).
  per_shard = jax.shard_map(jax.grad(loss), mesh=mesh,
                            in_specs=(spec(), spec("data")), out_specs=spec())
  xs = jax.device_put(x, sharding.batch_sharding(mesh))
  text = _on(per_shard).lower(params, xs).compile().as_text()
  assert "cnnrnn_lstm_fwd" in text and "cnnrnn_lstm_bwd" in text
  want = jax.tree.map(lambda *g: sum(g), *[jax.grad(loss)(params, x[i:i + 1]) for i in range(8)])
  _close(_on(per_shard)(params, xs), want)

  exported = jax.export.export(_on(jax.grad(loss)))(params, x)
  assert not re.search(r"custom_call\s*@cnnrnn", exported.mlir_module())
  _close(jax.export.deserialize(exported.serialize()).call(params, x), jax.grad(loss)(params, x))
