"""The protocol of models that carry a recurrent state from one batch to the next.

Language models trained with truncated BPTT over contiguous streams (and, later, decoders
that keep a state across calls) follow it; the trainer, its steps and the language-model
task use these functions rather than asking a model what it has.

A stateful model

- builds its all-zero carry with `zero_carry(batch_size)` (usable on the unbound module,
  a fixed pytree, so a jitted step never retraces), whose array leaves have the batch's
  rows first ([B, ...]);
- is called as `model.apply(variables, inputs, train, carry=carry)` (`carry=None`: zeros)
  and returns `(new_carry, outputs)`, Flax's `return_carry` order.

Its carry is sharded like the batch's rows and zeroed row by row at the start of each
pass over the data (`reset`).
"""

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Carry = Any


@runtime_checkable
class StatefulModel(Protocol):
  """A model with a carry across batches (see the module docstring)."""

  def zero_carry(self, batch_size: int) -> Carry:
    """The all-zero carry for `batch_size` rows."""


def is_stateful(model: Any) -> bool:
  """Whether `model` follows the protocol."""
  return isinstance(model, StatefulModel)


def reset(carry: Carry, rows: jax.Array | None) -> Carry:
  """`carry` with the rows whose flag in `rows` [B] is set replaced by zeros."""
  if carry is None or rows is None:
    return carry
  return jax.tree.map(
      lambda c: jnp.where(rows.reshape(-1, *([1] * (c.ndim - 1))), jnp.zeros_like(c), c), carry)


def shardings(carry: Carry, batch_sharding: jax.sharding.Sharding) -> Any:
  """The carry's shardings: every leaf split over rows like the batch."""
  return jax.tree.map(lambda _: batch_sharding, carry)
