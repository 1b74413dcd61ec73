"""Recurrent language model (word- or character-level) and sampling from it.

Zaremba, Sutskever & Vinyals 2014 ("Recurrent neural network regularization"): embedding
-> dropout -> L recurrent layers with dropout between them -> dropout -> softmax layer.
Their small/medium/large PTB models are `cell="lstm", num_layers=2` with
hidden_size = embedding_size = 200/650/1500, dropout 0/0.5/0.65, init_scale 0.1/0.05/0.04.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnrnn.nn.cells import CELLS
from cnnrnn.nn.rnn import StackedRNN

Array = jax.Array


class RNNLM(nn.Module):
  """Embedding -> stacked RNN -> dropout -> dense to the vocabulary.

  A stateful model (`cnnrnn.models.stateful`): the trainer runs truncated BPTT over
  contiguous streams with

    carry, logits = model.apply(variables, tokens, train, carry=carry)

  `carry` is `StackedRNN`'s carry: a tuple with one entry per layer, each h [B, H] (for
  LSTM the pair (c, h)); None means zeros, and `model.zero_carry(B)` builds the zeros
  explicitly (a fixed pytree, so a jitted step never retraces). Pass the returned carry
  (under `jax.lax.stop_gradient` if you like; the gradient is cut at the batch boundary
  anyway) as the next batch's carry, and reset it with `zero_carry` at epoch boundaries.

  Parameters: `embed/embedding` [V, E], `rnn/layer{i}/cell/...`, and `head/kernel` [H, V],
  `head/bias` [V] (with tie_weights only `head_bias` [V]: the output layer reuses the
  embedding matrix, Press & Wolf 2017 / Inan et al. 2017).

  Attributes:
    vocab_size: V.
    hidden_size: H of every recurrent layer.
    num_layers: number of recurrent layers.
    cell: "simple", "lstm" or "gru".
    embedding_size: E (default: hidden_size).
    dropout: dropout rate on the embeddings, between layers and before the output layer.
    tie_weights: share the embedding matrix with the output layer (needs E == H).
    init_scale: if set, every parameter is initialized U(-init_scale, init_scale)
      (Zaremba et al.); otherwise the cells' and Flax's default initializers.
    unroll: `lax.scan` unroll factor.
    fast_path: the cells' fast path in the driver (False: Flax's generic scan, same results).
    cell_kwargs: extra cell attributes (e.g. {"reset_after": False}).
    dtype: compute dtype.
    param_dtype: parameter storage dtype.
  """

  vocab_size: int
  hidden_size: int = 200
  num_layers: int = 2
  cell: str = "lstm"
  embedding_size: int | None = None
  dropout: float = 0.0
  tie_weights: bool = False
  init_scale: float | None = None
  unroll: int = 1
  fast_path: bool = True
  cell_kwargs: Mapping[str, Any] | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.nowrap
  def _stack(self, **kwargs) -> StackedRNN:
    cell_kwargs = dict(self.cell_kwargs or {})
    if self.init_scale is not None:
      init = _symmetric_uniform(self.init_scale)
      cell_kwargs.update(kernel_init=init, recurrent_kernel_init=init, bias_init=init)
      if self.cell == "lstm":
        cell_kwargs.setdefault("unit_forget_bias", False)
    return StackedRNN(cell=self.cell, hidden_size=self.hidden_size,
                      num_layers=self.num_layers, dropout=self.dropout, unroll=self.unroll,
                      fast_path=self.fast_path, cell_kwargs=cell_kwargs, dtype=self.dtype,
                      param_dtype=self.param_dtype, **kwargs)

  @nn.nowrap
  def zero_carry(self, batch_size: int):
    """The all-zero carry for a batch of streams (usable on the unbound module)."""
    return self._stack(parent=None).zero_carry(batch_size)

  @nn.compact
  def __call__(self, tokens: Array, train: bool = False, *, carry=None):
    """Runs the model.

    Args:
      tokens: [B, T] integer token ids.
      train: enables dropout (needs a 'dropout' rng).
      carry: the previous batch's final carry, or None for zeros.

    Returns:
      (final carry, logits [B, T, V]).

    Raises:
      ValueError: unknown cell, tokens not [B, T], or tie_weights with E != H.
    """
    if self.cell not in CELLS:
      raise ValueError(f"model.cell={self.cell!r}; allowed: {', '.join(sorted(CELLS))}")
    if tokens.ndim != 2:
      raise ValueError(f"RNNLM takes [batch, time] token ids, got shape {tokens.shape}")
    emb_size = self.embedding_size or self.hidden_size
    if self.tie_weights and emb_size != self.hidden_size:
      raise ValueError(f"tie_weights needs embedding_size == hidden_size, got {emb_size} "
                       f"and {self.hidden_size}")
    init = (nn.initializers.normal(1.0) if self.init_scale is None
            else _symmetric_uniform(self.init_scale))
    embed = nn.Embed(self.vocab_size, emb_size, embedding_init=init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="embed")
    stack = self._stack(name="rnn", return_carry=True)
    if train and self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=False)(embed(tokens))  # [B, T, E]
      carry, x = stack(x, train, initial_carry=carry)  # [B, T, H]
    else:  # The first layer reads the table itself (cheaper for small vocabularies).
      carry, x = stack(tokens, train, initial_carry=carry,
                       embedding=jnp.asarray(embed.embedding, self.dtype))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.tie_weights:
      bias = self.param("head_bias", nn.initializers.zeros_init(), (self.vocab_size,),
                        self.param_dtype)
      logits = embed.attend(x) + bias.astype(self.dtype)[None, None, :]
    else:
      kw = {} if self.init_scale is None else dict(kernel_init=init, bias_init=init)
      logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="head", **kw)(x)
    return carry, logits  # logits: [B, T, V]


def _symmetric_uniform(scale: float):
  """U(-scale, scale), the initializer of Zaremba et al."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def sample(model: RNNLM, variables: Mapping, prompt: Array, key: Array, num_steps: int,
           temperature: float = 1.0) -> Array:
  """Generates continuations of a prompt, one token at a time with `lax.scan`.

  Jittable with `model`, `num_steps` and `temperature` static, e.g.
  `jax.jit(functools.partial(sample, model, num_steps=200))(variables, prompt, key)`.

  Args:
    model: the language model.
    variables: its variables.
    prompt: [B, P] token ids, P >= 1.
    key: PRNG key; the same key gives the same tokens.
    num_steps: number of tokens to generate.
    temperature: softmax temperature (0 means greedy argmax).

  Returns:
    [B, P + num_steps] token ids: the prompt followed by the samples.

  Raises:
    ValueError: empty prompt or negative temperature.
  """
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [batch, length >= 1], got shape {prompt.shape}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  carry, logits = model.apply(variables, prompt, train=False)

  def draw(logits, key):  # [B, V] -> [B]
    if temperature == 0:
      return jnp.argmax(logits, axis=-1).astype(prompt.dtype)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(prompt.dtype)

  def body(state, key):
    carry, last_logits = state
    token = draw(last_logits, key)
    carry, logits = model.apply(variables, token[:, None], train=False, carry=carry)
    return (carry, logits[:, -1]), token

  _, tokens = lax.scan(body, (carry, logits[:, -1]), jax.random.split(key, num_steps))
  return jnp.concatenate([prompt, tokens.T], axis=1)  # tokens: [num_steps, B]
