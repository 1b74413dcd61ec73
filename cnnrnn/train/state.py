"""The train state: everything that changes during training, as one pytree."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """Attributes:
    step: number of optimizer updates applied (int32 scalar).
    params: the model's "params" collection.
    model_state: the model's other mutable collections (e.g. {"batch_stats": ...}).
    opt_state: the optimizer's state.
    rng: raw uint32 PRNG key data; step s uses fold_in(rng, s), so a resumed run draws
      the same numbers as an uninterrupted one.
    carry: the recurrent state carried from one training batch to the next (truncated
      BPTT over contiguous streams; rows [B, ...] like the batch), or None.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  carry: Any = None

  def variables(self) -> dict:
    return {"params": self.params, **self.model_state}
