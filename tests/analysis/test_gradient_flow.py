"""Gradient flow through time: the vanishing gradient of the tanh RNN, shown with numbers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import analysis
from cnnrnn import nn as cnn


@pytest.mark.slow
def test_norms_equal_gradient_of_the_hidden_state():
  """For a one-step-at-a-time check: dL/dh_t computed by hand via a Python loop."""
  cell = cnn.SimpleRNNCell(4)
  x = jax.random.normal(jax.random.key(0), (2, 5, 3))
  rnn = cnn.RNN(cell)
  variables = rnn.init(jax.random.key(1), x)
  norms = analysis.hidden_state_gradient_norms(rnn, variables, x, lambda y: jnp.sum(y[:, -1]))
  assert list(norms) == [""]  # The model is the driver itself.

  def loss_from(t, h):  # Loss as a function of h_t, running the remaining steps.
    for s in range(t + 1, x.shape[1]):
      h, _ = cell.apply({"params": variables["params"]["cell"]}, h, x[:, s])
    return jnp.sum(h)

  states = rnn.apply(variables, x)
  for t in range(x.shape[1]):
    g = jax.grad(lambda h, t=t: loss_from(t, h))(states[:, t])
    np.testing.assert_allclose(norms[""][t], np.linalg.norm(g, axis=-1).mean(), rtol=1e-5)


@pytest.mark.slow
def test_tanh_rnn_gradient_vanishes_lstm_much_less(tmp_path):
  t = 40
  small = {c: {"recurrent_kernel_init": nn.initializers.normal(0.5 / np.sqrt(32))}
           for c in ("simple", "lstm")}
  curves = analysis.compare_cells(("simple", "lstm"), seq_len=t, hidden_size=32, batch_size=8,
                                  cell_kwargs=small)
  assert all(c.shape == (t,) for c in curves.values())
  decay = {k: c[0] / c[-1] for k, c in curves.items()}
  assert decay["simple"] < 1e-8  # Orders of magnitude smaller at t=0 than at T-1.
  assert decay["lstm"] > 1e3 * decay["simple"]
  path = analysis.plot_gradient_norms(curves, tmp_path / "flow.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_stacked_bidirectional_model_reports_every_driver():
  from cnnrnn.models.rnn_classifier import RNNClassifier  # noqa: PLC0415

  model = RNNClassifier(num_outputs=1, hidden_size=4, num_layers=2, bidirectional=True)
  x = jnp.ones((2, 6, 3))
  variables = model.init(jax.random.key(0), x)
  norms = analysis.hidden_state_gradient_norms(model, variables, x, jnp.sum)
  assert set(norms) == {f"rnn/layer{i}/{d}" for i in (0, 1) for d in ("forward_rnn", "backward_rnn")}
  # Many-to-one from the backward direction: its gradient is largest at t=0.
  back = norms["rnn/layer1/backward_rnn"]
  assert back[0] > back[-1]
