"""The one scan driver `RNN`, and the `Bidirectional` and stacked wrappers.

`RNN` follows `flax.linen.RNN`: the same arguments (`time_major`, `reverse`, `keep_order`,
`return_carry`, `unroll`, `seq_lengths`, `initial_carry`, `init_key`), the same return
convention (outputs, or `(carry, outputs)` with `return_carry`) and the same semantics for
padded sequences, so any Flax cell runs in it with Flax's results. Deliberate differences:

- cells that declare a fast path (cnnrnn's `SimpleRNNCell`, `LSTMCell`, `GRUCell`) run on
  it: the input projection of all steps is one matmul before the loop and the loop has a
  hand-written Jacobian-vector product (`cnnrnn.nn.recurrence`); same function, faster
  gradients. `fast_path=False` runs them like any other cell, on `flax.linen.scan`.
- token inputs: `rnn(ids, embedding=table)` equals `rnn(table[ids])`; on the fast path,
  when the table has fewer rows than the batch has tokens, the input projection is
  computed once per table row (table @ W_x) and gathered, instead of once per token.
- the gradient-flow analysis (`cnnrnn.analysis.gradient_flow`) may add a zero
  perturbation to every hidden state (the 'perturbations' collection).

Padding, as in Flax: with `seq_lengths`, steps past a row's length still run (their
outputs are unspecified: mask them), the returned carry is the one after the row's last
valid step, and `reverse=True` reverses each row within its own length, so padding stays
at the end. One deliberate difference: for a length of 0 the returned carry is the
initial carry (Flax's indexing returns the carry after the last step).
"""

from collections.abc import Callable, Mapping
import functools
from typing import Any

import flax.linen as nn
from flax.linen import recurrent as flax_recurrent
import jax
import jax.numpy as jnp

from cnnrnn.nn import recurrence
from cnnrnn.nn.cells import CELLS, RecurrentCell, make_cell

Array = jax.Array
Carry = Any


def _select_rows(carries: Carry, lengths: Array, initial: Carry) -> Carry:
  """From stacked carries [T, B, ...], row b's carry after step lengths[b] - 1 (the
  initial carry when the length is 0)."""
  last = jnp.maximum(lengths - 1, 0)

  def pick(stack, init):
    row = stack[last, jnp.arange(stack.shape[1])]
    keep = (lengths > 0).reshape(-1, *([1] * (row.ndim - 1)))
    return jnp.where(keep, row, init)

  return jax.tree.map(pick, carries, initial)


class RNN(nn.Module):
  """Runs a recurrent cell over sequences (see the module docstring).

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn.nn import LSTMCell, RNN
    >>> rnn = RNN(LSTMCell(features=8), return_carry=True)
    >>> x = jnp.ones((2, 5, 3))  # [B, T, F]
    >>> variables = rnn.init(jax.random.key(0), x)
    >>> (c, h), y = rnn.apply(variables, x, seq_lengths=jnp.array([5, 3]))
    >>> y.shape, h.shape  # outputs [B, T, H]; the final carry is each row's last real step
    ((2, 5, 8), (2, 8))

  Attributes:
    cell: any Flax recurrent cell (its parameters live under `cell/`).
    time_major: inputs are [T, B, F] instead of [B, T, F] (outputs alike).
    return_carry: return (final carry, outputs) instead of outputs.
    reverse: process sequences back to front; outputs come back reversed unless
      `keep_order`.
    keep_order: with reverse, return outputs in input order.
    unroll: `lax.scan` unroll factor.
    fast_path: use the cell's fast path when it declares one.
    time_loop: the fast path's time loop, a function with the signature and results of
      `cnnrnn.nn.recurrence.time_loop` (None: that function). A hook, as
      `flax.linen.Conv.conv_general_dilated` is for the convolution: `cnnrnn.accel` sets it
      to run the loop on other kernels.
  """

  cell: nn.Module
  time_major: bool = False
  return_carry: bool = False
  reverse: bool = False
  keep_order: bool = False
  unroll: int = 1
  fast_path: bool = True
  time_loop: Callable[..., tuple[Carry, Array]] | None = None

  @nn.compact
  def __call__(self, inputs: Array, *, initial_carry: Carry | None = None,
               init_key: Array | None = None, seq_lengths: Array | None = None,
               return_carry: bool | None = None, time_major: bool | None = None,
               reverse: bool | None = None, keep_order: bool | None = None,
               embedding: Array | None = None):
    """Runs the cell over time.

    Args:
      inputs: [B, T, F] ([T, B, F] if time_major), or [B, T] integer ids into `embedding`.
      initial_carry: the cell's carry for batch B (default: `cell.initialize_carry`); pass
        the previous batch's final carry for truncated BPTT.
      init_key: PRNG key for `cell.initialize_carry` (default `jax.random.key(0)`).
      seq_lengths: optional [B] integer lengths (0 <= length <= T).
      return_carry, time_major, reverse, keep_order: override the attributes.
      embedding: optional [V, F] table; inputs are then ids and step t reads
        embedding[inputs[:, t]].

    Returns:
      outputs [B, T, H] ([T, B, H] if time_major), or (final carry, outputs).

    Raises:
      ValueError: inputs of the wrong rank or dtype, or seq_lengths not of shape [B].
    """
    return_carry = self.return_carry if return_carry is None else return_carry
    time_major = self.time_major if time_major is None else time_major
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    if embedding is None and inputs.ndim != 3:
      raise ValueError(f"RNN inputs must be [batch, time, features] (or time-major), got shape "
                       f"{inputs.shape}")
    if embedding is not None and (inputs.ndim != 2 or embedding.ndim != 2
                                  or not jnp.issubdtype(inputs.dtype, jnp.integer)):
      raise ValueError(f"with an embedding, RNN inputs must be [batch, time] integer ids and "
                       f"the embedding [vocab, features], got {inputs.dtype} "
                       f"{inputs.shape} and {embedding.shape}")
    t_axis = 0 if time_major else 1
    b = inputs.shape[1 - t_axis]
    if seq_lengths is not None and seq_lengths.shape != (b,):
      raise ValueError(f"seq_lengths must have shape [batch]=({b},), got {seq_lengths.shape}")
    num_features = inputs.shape[-1] if embedding is None else embedding.shape[-1]

    if reverse:  # Each row reversed within its length (padding stays at the end).
      inputs = flax_recurrent.flip_sequences(inputs, seq_lengths, num_batch_dims=1,
                                             time_major=time_major)
    if initial_carry is None:
      key = jax.random.key(0) if init_key is None else init_key
      initial_carry = self.cell.initialize_carry(key, (b, num_features))

    delta = self._hidden_state_perturbation(inputs.shape[t_axis], b, reverse, seq_lengths)
    if self.fast_path and isinstance(self.cell, RecurrentCell):
      carry, outputs = self._run_fast(inputs, initial_carry, seq_lengths, embedding, delta,
                                      time_major)
    else:
      if delta is not None:
        raise ValueError("hidden-state perturbations need a cnnrnn cell on the fast path")
      if embedding is not None:
        inputs = jnp.take(embedding, inputs, axis=0)
      carry, outputs = self._run_generic(inputs, initial_carry, seq_lengths, time_major)

    if reverse and keep_order:
      outputs = flax_recurrent.flip_sequences(outputs, seq_lengths, num_batch_dims=1,
                                              time_major=time_major)
    return (carry, outputs) if return_carry else outputs

  def _hidden_state_perturbation(self, t: int, b: int, reverse: bool,
                                 seq_lengths: Array | None) -> Array | None:
    """Zeros registered as the 'perturbations' entry `hidden_states` [B, T, H] (in input
    order) when that collection is in play, returned time-major in processing order;
    else None."""
    if ((self.is_mutable_collection("perturbations") and not self.is_initializing())
        or self.has_variable("perturbations", "hidden_states")):
      delta = self.perturb("hidden_states", jnp.zeros((b, t, self.cell.features),
                                                      self.cell.dtype))
      if reverse:
        delta = flax_recurrent.flip_sequences(delta, seq_lengths, num_batch_dims=1,
                                              time_major=False)
      return jnp.swapaxes(delta, 0, 1)
    return None

  def _run_fast(self, inputs, carry, seq_lengths, embedding, delta, time_major):
    cell = self.cell
    x = inputs if time_major else jnp.swapaxes(inputs, 0, 1)  # [T, B, F] or ids [T, B]
    t, b = x.shape[:2]
    if embedding is None:
      kernel, input_bias = cell.input_weights(x.shape[-1])
      xp = recurrence.rowwise_dot(x.astype(cell.dtype), kernel)  # [T, B, G*H]
    else:
      kernel, input_bias = cell.input_weights(embedding.shape[-1])
      table = embedding.astype(cell.dtype)
      if embedding.shape[0] < t * b:  # Project the table, then gather.
        xp = jnp.take(jnp.dot(table, kernel), x, axis=0)
      else:
        xp = recurrence.rowwise_dot(jnp.take(table, x, axis=0), kernel)
    rec_kernel, rec_bias = cell.recurrent_weights()
    loop = (self.time_loop or recurrence.time_loop) if delta is None else functools.partial(
        recurrence.reference_loop, hidden_delta=delta)
    carry, ys = loop(cell, rec_kernel, rec_bias, carry, xp, input_bias, seq_lengths,
                     unroll=self.unroll)
    return carry, (ys if time_major else jnp.swapaxes(ys, 0, 1))

  def _run_generic(self, inputs, carry, seq_lengths, time_major):
    """Any Flax cell, on `flax.linen.scan` (as `flax.linen.RNN` runs it)."""
    select = seq_lengths is not None

    def body(cell, carry, x):
      new, y = cell(carry, x)
      # Keep the carry's dtypes (a cell computing in another dtype would change them).
      new = jax.tree.map(lambda n, c: n.astype(c.dtype), new, carry)
      return new, ((new, y) if select else y)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=0 if time_major else 1,
                   out_axes=(0, 0 if time_major else 1) if select else (0 if time_major else 1),
                   unroll=self.unroll)
    last, out = scan(self.cell, carry, inputs)
    if not select:
      return last, out
    carries, outputs = out
    return _select_rows(carries, seq_lengths, carry), outputs


class Bidirectional(nn.Module):
  """A forward and a backward RNN over the same inputs, outputs merged (concatenated).

  Same fields and call as `flax.linen.Bidirectional` (which also accepts cnnrnn's `RNN`),
  plus `embedding=` passed to both directions. The backward RNN runs with `reverse=True,
  keep_order=True`: its outputs are in input order.

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn.nn import Bidirectional, GRUCell, RNN
    >>> birnn = Bidirectional(RNN(GRUCell(features=4)), RNN(GRUCell(features=4)))
    >>> x = jnp.ones((2, 6, 3))  # [B, T, F]
    >>> variables = birnn.init(jax.random.key(0), x)
    >>> birnn.apply(variables, x).shape  # both directions' features, concatenated
    (2, 6, 8)

  Attributes:
    forward_rnn: the forward-in-time RNN.
    backward_rnn: the backward-in-time RNN.
    merge_fn: merges the two outputs (default: concatenate features).
    time_major: inputs are [T, B, F].
    return_carry: return ((forward carry, backward carry), outputs).
  """

  forward_rnn: nn.Module
  backward_rnn: nn.Module
  merge_fn: Callable[[Array, Array], Array] = flax_recurrent._concatenate  # pylint: disable=protected-access
  time_major: bool = False
  return_carry: bool = False

  def __call__(self, inputs: Array, *, initial_carry: tuple[Carry, Carry] | None = None,
               init_key: Array | None = None, seq_lengths: Array | None = None,
               return_carry: bool | None = None, time_major: bool | None = None,
               embedding: Array | None = None):
    """Args: inputs [B, T, F] (or ids into `embedding`, as for `RNN`); initial_carry
    (forward, backward) or None; seq_lengths [B].

    Returns: outputs [B, T, H_fwd + H_bwd], or ((carry_fwd, carry_bwd), outputs).
    """
    return_carry = self.return_carry if return_carry is None else return_carry
    time_major = self.time_major if time_major is None else time_major
    init_f, init_b = (None, None) if initial_carry is None else initial_carry
    key_f = key_b = None
    if init_key is not None:
      key_f, key_b = jax.random.split(init_key)
    kw = dict(seq_lengths=seq_lengths, return_carry=True, time_major=time_major)
    if embedding is not None:
      kw["embedding"] = embedding
    carry_f, out_f = self.forward_rnn(inputs, initial_carry=init_f, init_key=key_f,
                                      reverse=False, **kw)
    carry_b, out_b = self.backward_rnn(inputs, initial_carry=init_b, init_key=key_b,
                                       reverse=True, keep_order=True, **kw)
    outputs = jax.tree.map(self.merge_fn, out_f, out_b)
    return ((carry_f, carry_b), outputs) if return_carry else outputs


class StackedRNN(nn.Module):
  """num_layers recurrent layers (optionally bidirectional) with dropout between them.

  Dropout follows Zaremba et al. 2014: only on the non-recurrent connections, here the
  inputs of layers 1..L-1 (callers add it before the first and after the last layer when
  they want it there, as `RNNLM` does).

  The carry is a tuple with one entry per layer: the cell's carry (h [B, H], or (c, h) for
  LSTM), or (forward carry, backward carry) when bidirectional. `zero_carry(B)` builds it.
  Returns like `RNN`: outputs, or (carry, outputs) with `return_carry`.

  Parameters live under `layer{i}/cell/...` (or `layer{i}/forward_rnn/cell/...` and
  `layer{i}/backward_rnn/cell/...`).

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn.nn import StackedRNN
    >>> stack = StackedRNN(cell="lstm", hidden_size=16, num_layers=2, bidirectional=True,
    ...                    return_carry=True)
    >>> x = jnp.ones((4, 7, 5))  # [B, T, F]
    >>> variables = stack.init(jax.random.key(0), x)
    >>> carry, y = stack.apply(variables, x)
    >>> y.shape, len(carry)  # [B, T, 2H]; one carry per layer
    ((4, 7, 32), 2)

  Attributes:
    cell: "simple", "lstm" or "gru".
    hidden_size: H of every layer.
    num_layers: number of layers.
    bidirectional: each layer reads both directions; outputs are [B, T, 2H].
    dropout: dropout rate between layers (applied when train=True).
    unroll: `lax.scan` unroll factor.
    fast_path: use the cells' fast path (False: Flax's generic scan, same results).
    return_carry: return (final carry, outputs).
    cell_kwargs: extra cell attributes (e.g. {"reset_after": False}, {"use_bias": False},
      initializers).
    dtype: compute dtype.
    param_dtype: parameter storage dtype.
  """

  cell: str = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  unroll: int = 1
  fast_path: bool = True
  return_carry: bool = False
  cell_kwargs: Mapping[str, Any] | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.nowrap
  def _make_cell(self, **kwargs) -> RecurrentCell:
    return make_cell(self.cell, self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                     **dict(self.cell_kwargs or {}), **kwargs)

  @nn.nowrap
  def zero_carry(self, batch_size: int) -> tuple[Carry, ...]:
    """The all-zero carry for a batch (usable on the unbound module)."""
    one = self._make_cell(parent=None).initialize_carry(None, (batch_size, 1))
    return tuple((one, one) if self.bidirectional else one for _ in range(self.num_layers))

  @nn.compact
  def __call__(self, inputs: Array, train: bool = False, *, seq_lengths: Array | None = None,
               initial_carry: tuple[Carry, ...] | None = None, return_carry: bool | None = None,
               embedding: Array | None = None):
    """Runs all layers.

    Args:
      inputs: [B, T, F], or [B, T] ids into `embedding` (see `RNN`).
      train: enables dropout (needs a 'dropout' rng).
      seq_lengths: optional [B] lengths.
      initial_carry: a carry as returned by a previous call (or `zero_carry`), or None.
      return_carry: overrides the attribute.
      embedding: optional [V, F] table read by the first layer.

    Returns:
      outputs [B, T, H or 2H] of the last layer, or (final carry, outputs).

    Raises:
      ValueError: unknown cell, num_layers < 1, or an initial carry with the wrong
        number of layers.
    """
    return_carry = self.return_carry if return_carry is None else return_carry
    if self.cell not in CELLS:
      raise ValueError(f"cell={self.cell!r}; allowed: {', '.join(sorted(CELLS))}")
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
    if initial_carry is not None and len(initial_carry) != self.num_layers:
      raise ValueError(f"initial_carry has {len(initial_carry)} layers, expected "
                       f"{self.num_layers}")
    x, carries = inputs, []
    for i in range(self.num_layers):
      if i > 0 and self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      rnn = functools.partial(RNN, unroll=self.unroll, fast_path=self.fast_path)
      if self.bidirectional:
        # parent=None: the RNN that receives the cell adopts it, so its params sit under cell/.
        layer = Bidirectional(rnn(self._make_cell(parent=None), parent=None),
                              rnn(self._make_cell(parent=None), parent=None), name=f"layer{i}")
      else:
        layer = rnn(self._make_cell(parent=None), name=f"layer{i}")
      kw = {} if i > 0 or embedding is None else {"embedding": embedding}
      carry, x = layer(x, initial_carry=None if initial_carry is None else initial_carry[i],
                       seq_lengths=seq_lengths, return_carry=True, **kw)
      carries.append(carry)
    return (tuple(carries), x) if return_carry else x
