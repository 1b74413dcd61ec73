"""Parity of converted torch.nn.RNN/LSTM/GRU with PyTorch, packed sequences included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import nn as cnn
from cnnrnn.interop.torch import rnn_from_torch, rnn_to_torch

torch = pytest.importorskip("torch")

B, T, F, H = 4, 7, 3, 5
LENGTHS = np.array([7, 2, 5, 1])


def _torch_run(module, x, lengths, initial_states=None):
  """PyTorch outputs [B, T, D*H] (zeros past each length) and final states as numpy."""
  xt = torch.from_numpy(np.asarray(x))
  if not module.batch_first:
    xt = xt.transpose(0, 1)
  if lengths is not None:
    xt = torch.nn.utils.rnn.pack_padded_sequence(
        xt, torch.from_numpy(lengths), batch_first=module.batch_first, enforce_sorted=False)
  with torch.no_grad():
    out, states = module(xt, initial_states)
  if lengths is not None:
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=module.batch_first,
                                                    total_length=T)
  if not module.batch_first:
    out = out.transpose(0, 1)
  states = states if isinstance(states, tuple) else (states,)
  return out.numpy(), [s.numpy() for s in states]


CASES = [
    # (torch class, kwargs)
    ("RNN", dict(num_layers=1, bidirectional=False, batch_first=True)),
    ("RNN", dict(num_layers=2, bidirectional=True, batch_first=False, nonlinearity="relu")),
    ("LSTM", dict(num_layers=1, bidirectional=True, batch_first=True)),
    ("LSTM", dict(num_layers=2, bidirectional=False, batch_first=False, bias=False)),
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(num_layers=1, bidirectional=False, batch_first=False)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
]


@pytest.mark.parametrize("cls,kwargs", CASES, ids=lambda c: str(c))
def test_parity_with_pytorch(cls, kwargs):
  torch.manual_seed(0)
  module = getattr(torch.nn, cls)(F, H, **kwargs)
  ours, variables = rnn_from_torch(module)
  x = np.random.default_rng(0).standard_normal((B, T, F)).astype(np.float32)
  apply = jax.jit(ours.apply)
  for lengths in (None, LENGTHS):
    out_ref, states_ref = _torch_run(module, x, lengths)
    out, states = apply(variables, jnp.asarray(x),
                        None if lengths is None else jnp.asarray(lengths))
    states = states if isinstance(states, tuple) else (states,)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=2e-6)
    num_states = kwargs["num_layers"] * (2 if kwargs["bidirectional"] else 1)
    assert len(states) == len(states_ref)
    for s, s_ref in zip(states, states_ref):
      assert s.shape == s_ref.shape == (num_states, B, H)
      np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=2e-6)


def test_initial_states_in_pytorch_layout():
  torch.manual_seed(1)
  module = torch.nn.LSTM(F, H, num_layers=2, bidirectional=True, batch_first=True)
  ours, variables = rnn_from_torch(module)
  x = np.random.default_rng(1).standard_normal((B, T, F)).astype(np.float32)
  h0, c0 = (np.random.default_rng(s).standard_normal((4, B, H)).astype(np.float32) for s in (2, 3))
  out_ref, (h_ref, c_ref) = _torch_run(module, x, LENGTHS,
                                       (torch.from_numpy(h0), torch.from_numpy(c0)))
  out, (h, c) = ours.apply(variables, jnp.asarray(x), jnp.asarray(LENGTHS),
                           (jnp.asarray(h0), jnp.asarray(c0)))
  np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("cls,kwargs", CASES, ids=lambda c: str(c))
def test_round_trip_is_exact(cls, kwargs):
  torch.manual_seed(2)
  module = getattr(torch.nn, cls)(F, H, **kwargs)
  back = rnn_to_torch(*rnn_from_torch(module), batch_first=module.batch_first)
  assert type(back) is type(module)
  if cls == "RNN":
    assert back.nonlinearity == module.nonlinearity
  ref = module.state_dict()
  got = back.state_dict()
  assert list(got) == list(ref)
  for k in ref:
    assert torch.equal(got[k], ref[k]), k


@pytest.mark.slow
def test_native_stack_to_torch():
  """A StackedRNN trained here (no recurrent bias) exports with bias_hh = 0."""
  stack = cnn.StackedRNN(cell="lstm", hidden_size=H, num_layers=2)
  x = np.random.default_rng(3).standard_normal((B, T, F)).astype(np.float32)
  variables = stack.init(jax.random.key(0), jnp.asarray(x))
  module = rnn_to_torch(stack, variables)
  out_ref, _ = _torch_run(module, x, None)
  out = stack.apply(variables, jnp.asarray(x))
  np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=2e-6)
  with pytest.raises(ValueError, match="reset_after"):
    gru = cnn.StackedRNN(cell="gru", hidden_size=H, cell_kwargs={"reset_after": False})
    rnn_to_torch(gru, gru.init(jax.random.key(0), jnp.asarray(x)))


def test_rejects_unsupported_modules():
  with pytest.raises(ValueError, match="expected torch.nn.RNN, LSTM or GRU"):
    rnn_from_torch(torch.nn.Linear(3, 4))
  with pytest.raises(ValueError, match="proj_size"):
    rnn_from_torch(torch.nn.LSTM(F, H, proj_size=2))
