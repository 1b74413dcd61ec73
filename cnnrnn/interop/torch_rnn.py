"""`torch.nn.RNN` / `LSTM` / `GRU` <-> `cnnrnn.nn.StackedRNN`, with PyTorch's call convention.

PyTorch keeps per layer and direction (suffix `_reverse` for the backward direction):
  weight_ih_l{k} [G*H, F_k]   weight_hh_l{k} [G*H, H]   bias_ih_l{k} [G*H]   bias_hh_l{k} [G*H]
with the same gate order as cnnrnn (LSTM [i, f, g, o], GRU [r, z, n]), so conversion is a
transpose: input/kernel = weight_ih.T, recurrent/kernel = weight_hh.T, input/bias = bias_ih,
recurrent/bias = bias_hh. PyTorch's GRU is cnnrnn's `GRUCell(reset_after=True)`.

torch is imported inside the functions only.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnrnn.nn.rnn import StackedRNN

Array = jax.Array

_MODES = {"RNN_TANH": ("simple", {"nonlinearity": "tanh"}),
          "RNN_RELU": ("simple", {"nonlinearity": "relu"}),
          "LSTM": ("lstm", {}),
          "GRU": ("gru", {"reset_after": True})}


class TorchCompatibleRNN(nn.Module):
  """A `StackedRNN` (under `rnn/`) called like `torch.nn.RNN/LSTM/GRU`.

  Inputs are always batch-major [B, T, F], whatever the source module's `batch_first`.
  Final states use PyTorch's layout [num_layers * num_directions, B, H], ordered layer by
  layer with the forward direction first (h_n; for LSTM the pair (h_n, c_n)).

  Attributes:
    rnn: the stacked RNN whose parameters are converted.
  """

  rnn: StackedRNN

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, initial_states: Any = None,
               *, train: bool = False) -> tuple[Array, Any]:
    """Args:
      x: [B, T, F] inputs.
      seq_lengths: optional [B] lengths, like a packed sequence: outputs past an
        example's length are zero (as after `pad_packed_sequence`) and its final state is
        the one at its last valid step (first step for the backward direction).
      initial_states: h_0 [L*D, B, H] (for LSTM (h_0, c_0)), or None for zeros.
      train: enables the between-layer dropout.

    Returns:
      (outputs [B, T, D*H], h_n [L*D, B, H] or (h_n, c_n) for LSTM).
    """
    lstm = self.rnn.cell == "lstm"
    carry = None if initial_states is None else self._carry_from_states(initial_states, lstm)
    carry, outputs = self.rnn(x, train, seq_lengths=seq_lengths, initial_carry=carry,
                              return_carry=True)
    if seq_lengths is not None:  # Zero past each length, as pad_packed_sequence leaves it.
      valid = jnp.arange(x.shape[1])[None, :] < seq_lengths[:, None]  # [B, T]
      outputs = jnp.where(valid[:, :, None], outputs, jnp.zeros_like(outputs))
    cells = [c for layer in carry for c in (layer if self.rnn.bidirectional else (layer,))]
    if lstm:  # Our LSTM carry is (c, h); PyTorch returns (h_n, c_n).
      return outputs, (jnp.stack([h for _, h in cells]), jnp.stack([c for c, _ in cells]))
    return outputs, jnp.stack(cells)

  @nn.nowrap
  def _carry_from_states(self, states, lstm: bool):
    if lstm:
      h, c = states
      per_cell = [(c[i], h[i]) for i in range(h.shape[0])]
    else:
      per_cell = [states[i] for i in range(states.shape[0])]
    expected = self.rnn.num_layers * (2 if self.rnn.bidirectional else 1)
    if len(per_cell) != expected:
      raise ValueError(f"initial_states has {len(per_cell)} entries along axis 0, expected "
                       f"num_layers * num_directions = {expected}")
    if self.rnn.bidirectional:
      return tuple((per_cell[2 * i], per_cell[2 * i + 1]) for i in range(self.rnn.num_layers))
    return tuple(per_cell)


def _to_numpy(t) -> np.ndarray:
  return t.detach().cpu().numpy()


def _direction_paths(num_layers: int, bidirectional: bool):
  """(torch suffix, path of the cell in the params tree) for every layer and direction."""
  for k in range(num_layers):
    if bidirectional:
      yield f"l{k}", (f"layer{k}", "forward_rnn", "cell")
      yield f"l{k}_reverse", (f"layer{k}", "backward_rnn", "cell")
    else:
      yield f"l{k}", (f"layer{k}", "cell")


def rnn_from_torch(torch_rnn, *, dtype: Any = jnp.float32,
                   param_dtype: Any = jnp.float32) -> tuple[TorchCompatibleRNN, dict]:
  """Converts a `torch.nn.RNN`, `LSTM` or `GRU` into this project's module and variables.

  Args:
    torch_rnn: the PyTorch module (any num_layers, bidirectional, batch_first, bias).
    dtype: compute dtype of the returned module.
    param_dtype: dtype of the returned parameters.

  Returns:
    (module, variables): `module.apply(variables, x, seq_lengths=None)` with batch-major
    x [B, T, F] returns (outputs [B, T, D*H], final states) as documented in
    `TorchCompatibleRNN`. Parameters are under variables["params"]["rnn"], in the layout
    of `StackedRNN`.

  Raises:
    ValueError: not an RNN/LSTM/GRU, or an LSTM with proj_size > 0.
  """
  import torch  # noqa: PLC0415 (torch is optional)

  if not isinstance(torch_rnn, torch.nn.RNNBase) or torch_rnn.mode not in _MODES:
    raise ValueError(f"expected torch.nn.RNN, LSTM or GRU, got {type(torch_rnn).__name__}")
  if getattr(torch_rnn, "proj_size", 0):
    raise ValueError("LSTM with proj_size > 0 has no cnnrnn equivalent")
  cell, cell_kwargs = _MODES[torch_rnn.mode]
  cell_kwargs = {**cell_kwargs, "use_bias": torch_rnn.bias, "recurrent_bias": torch_rnn.bias}
  module = TorchCompatibleRNN(StackedRNN(
      cell=cell, hidden_size=torch_rnn.hidden_size, num_layers=torch_rnn.num_layers,
      bidirectional=torch_rnn.bidirectional, dropout=float(torch_rnn.dropout),
      cell_kwargs=cell_kwargs, dtype=dtype, param_dtype=param_dtype))

  state = {k: _to_numpy(v) for k, v in torch_rnn.state_dict().items()}
  params: dict = {}
  for suffix, path in _direction_paths(torch_rnn.num_layers, torch_rnn.bidirectional):
    leaf = {"input": {"kernel": state.pop(f"weight_ih_{suffix}").T},
            "recurrent": {"kernel": state.pop(f"weight_hh_{suffix}").T}}
    if torch_rnn.bias:
      leaf["input"]["bias"] = state.pop(f"bias_ih_{suffix}")
      leaf["recurrent"]["bias"] = state.pop(f"bias_hh_{suffix}")
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = leaf
  if state:
    raise ValueError(f"unconverted PyTorch parameters: {sorted(state)}")

  x = jax.ShapeDtypeStruct((1, 1, torch_rnn.input_size), dtype)
  expected = jax.eval_shape(module.init, jax.random.key(0), x)["params"]["rnn"]
  _check_tree(expected, params)
  params = jax.tree.map(lambda a: jnp.asarray(a, param_dtype), params)
  return module, {"params": {"rnn": params}}


def _check_tree(expected, got, prefix: str = ""):
  """Raises ValueError unless `got` has exactly the keys and shapes of `expected`."""
  if isinstance(expected, Mapping):
    if not isinstance(got, Mapping) or set(expected) != set(got):
      got_keys = sorted(got) if isinstance(got, Mapping) else type(got).__name__
      raise ValueError(f"parameter tree mismatch at {prefix or '/'}: expected keys "
                       f"{sorted(expected)}, got {got_keys}")
    for k in expected:
      _check_tree(expected[k], got[k], f"{prefix}/{k}")
  elif tuple(expected.shape) != tuple(np.shape(got)):
    raise ValueError(f"{prefix}: expected shape {tuple(expected.shape)}, got {np.shape(got)}")


def _walk(tree: Mapping, path: tuple[str, ...]) -> Mapping:
  for name in path:
    tree = tree[name]
  return tree


def rnn_to_torch(module: TorchCompatibleRNN | StackedRNN, variables: Mapping, *,
                 batch_first: bool = True):
  """The PyTorch module equivalent to a converted (or natively built) stacked RNN.

  A cell without a recurrent bias gets bias_hh = 0 (its input bias carries the sum), so
  `rnn_to_torch(*rnn_from_torch(m))` reproduces m's state dict exactly.

  Args:
    module: a `TorchCompatibleRNN` or a `StackedRNN`.
    variables: its variables ({"params": ...}).
    batch_first: the `batch_first` of the returned module.

  Returns:
    A `torch.nn.RNN`, `LSTM` or `GRU` in eval mode holding the converted weights.

  Raises:
    ValueError: a configuration PyTorch cannot express (GRU with reset_after=False, a
      recurrent bias without an input bias).
  """
  import torch  # noqa: PLC0415 (torch is optional)

  params = variables["params"]
  if isinstance(module, TorchCompatibleRNN):
    stack, params = module.rnn, params["rnn"]
  elif isinstance(module, StackedRNN):
    stack = module
  else:
    raise ValueError(f"expected TorchCompatibleRNN or StackedRNN, got {type(module).__name__}")
  kwargs = dict(stack.cell_kwargs or {})
  if stack.cell == "gru" and not kwargs.get("reset_after", True):
    raise ValueError("PyTorch's GRU is the reset_after=True form; this GRU uses "
                     "reset_after=False")
  use_bias = kwargs.get("use_bias", True)
  _, first_path = next(_direction_paths(stack.num_layers, stack.bidirectional))
  input_size = _walk(params, first_path)["input"]["kernel"].shape[0]
  common = dict(input_size=input_size, hidden_size=stack.hidden_size,
                num_layers=stack.num_layers, bias=use_bias, batch_first=batch_first,
                dropout=stack.dropout, bidirectional=stack.bidirectional)
  if stack.cell == "simple":
    torch_rnn = torch.nn.RNN(nonlinearity=kwargs.get("nonlinearity", "tanh"), **common)
  else:
    torch_rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[stack.cell](**common)

  state = {}
  for suffix, path in _direction_paths(stack.num_layers, stack.bidirectional):
    leaf = _walk(params, path)
    state[f"weight_ih_{suffix}"] = np.asarray(leaf["input"]["kernel"]).T
    state[f"weight_hh_{suffix}"] = np.asarray(leaf["recurrent"]["kernel"]).T
    if use_bias:
      state[f"bias_ih_{suffix}"] = np.asarray(leaf["input"]["bias"])
      rec_bias = leaf["recurrent"].get("bias")
      state[f"bias_hh_{suffix}"] = (np.zeros_like(state[f"bias_ih_{suffix}"])
                                    if rec_bias is None else np.asarray(rec_bias))
    elif "bias" in leaf["recurrent"]:
      raise ValueError("a recurrent bias without an input bias has no PyTorch equivalent")
  torch_rnn.load_state_dict({k: torch.from_numpy(np.array(v))
                             for k, v in state.items()}, strict=True)
  return torch_rnn.eval()
