"""Recurrent sequence classifier / regressor (many-to-one or many-to-many)."""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnrnn.nn.cells import CELLS, make_cell
from cnnrnn.nn.rnn import StackedRNN

Array = jax.Array


class RNNClassifier(nn.Module):
  """[Embedding ->] stacked (bi)RNN -> dropout -> dense to num_outputs.

  Many-to-one reads the final carry of the last layer, i.e. the hidden state at each
  example's last valid step (and, when bidirectional, the backward direction's state at
  step 0), concatenated over directions. Many-to-many applies the head at every step.
  Whether the outputs are class logits or regression values is the task's concern.

  Parameters: `embed/embedding` [V, E] (token inputs only), `rnn/layer{i}/...`,
  `head/kernel`, `head/bias`.

  Attributes:
    num_outputs: size of the output layer.
    hidden_size: H of every recurrent layer.
    num_layers: number of recurrent layers.
    cell: "simple", "lstm" or "gru".
    bidirectional: read the sequence in both directions.
    many_to_many: one output per step instead of one per sequence.
    dropout: dropout rate between layers and before the head.
    vocab_size: if set, inputs are [B, T] token ids embedded into embedding_size.
    embedding_size: E (default: hidden_size).
    unroll: `lax.scan` unroll factor.
    fast_path: the cells' fast path in the driver (False: Flax's generic scan, same results).
    cell_kwargs: extra cell attributes (initializers, {"reset_after": False}, ...).
    dtype: compute dtype.
    param_dtype: parameter storage dtype.
  """

  num_outputs: int
  hidden_size: int = 128
  num_layers: int = 1
  cell: str = "lstm"
  bidirectional: bool = False
  many_to_many: bool = False
  dropout: float = 0.0
  vocab_size: int | None = None
  embedding_size: int | None = None
  unroll: int = 1
  fast_path: bool = True
  cell_kwargs: Mapping[str, Any] | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, train: bool = False, *,
               seq_lengths: Array | None = None) -> Array:
    """Runs the model.

    Args:
      inputs: [B, T, F] floats, or [B, T] token ids when vocab_size is set.
      train: enables dropout (needs a 'dropout' rng).
      seq_lengths: optional [B] lengths; steps past them never affect the result.

    Returns:
      [B, num_outputs], or [B, T, num_outputs] when many_to_many (rows past each
      length are unspecified, as the driver's outputs there: mask them in the loss).

    Raises:
      ValueError: unknown cell or inputs of the wrong rank.
    """
    if self.cell not in CELLS:
      raise ValueError(f"model.cell={self.cell!r}; allowed: {', '.join(sorted(CELLS))}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    embedding = None
    if self.vocab_size is not None:
      if inputs.ndim != 2:
        raise ValueError(f"with vocab_size set, inputs must be [batch, time] token ids, got "
                         f"shape {inputs.shape}")
      embed = nn.Embed(self.vocab_size, self.embedding_size or self.hidden_size,
                       name="embed", **kw)
      # The first layer reads the table itself (cheaper for small vocabularies, see RNN).
      x, embedding = inputs, jnp.asarray(embed.embedding, self.dtype)
    elif inputs.ndim != 3:
      raise ValueError(f"inputs must be [batch, time, features] (or set vocab_size for token "
                       f"ids), got shape {inputs.shape}")
    else:
      x = inputs.astype(self.dtype)
    rnn = StackedRNN(
        cell=self.cell, hidden_size=self.hidden_size, num_layers=self.num_layers,
        bidirectional=self.bidirectional, dropout=self.dropout, unroll=self.unroll,
        fast_path=self.fast_path, return_carry=True, cell_kwargs=self.cell_kwargs, name="rnn",
        **kw)
    carry, outputs = rnn(x, train, seq_lengths=seq_lengths, embedding=embedding)  # [B, T, D*H]
    if self.many_to_many:
      features = outputs  # [B, T, D*H]
    else:
      cell = make_cell(self.cell, self.hidden_size, parent=None,
                       **dict(self.cell_kwargs or {}))
      last = carry[-1] if self.bidirectional else (carry[-1],)
      features = jnp.concatenate([cell.hidden_state(c) for c in last], axis=-1)  # [B, D*H]
    features = nn.Dropout(self.dropout, deterministic=not train)(features)
    return nn.Dense(self.num_outputs, name="head", **kw)(features)
