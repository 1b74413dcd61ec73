"""Freezing and unfreezing: the grouped optimizer of a strategy, and the linear probe.

The optimizer of each group is made by the caller's `optimizer_factory` (the trainer's
`cnnrnn.train.optim.make_optimizer`), so this package needs nothing from the trainer.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cnnrnn.transfer.config import validate
from cnnrnn.transfer.groups import check_head, group_labels, unfreeze_step

# (optimizer config block, total steps) -> (transformation, learning-rate schedule).
OptimizerFactory = Callable[..., tuple[optax.GradientTransformation, optax.Schedule]]


def _zero_before(step: int) -> optax.GradientTransformation:
  """Zeroes what passes through (gradients or updates) until `step`, counted in updates."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    keep = state.count >= step
    updates = jax.tree.map(lambda g: jnp.where(keep, g, jnp.zeros_like(g)), updates)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def make_optimizer(optimizer_cfg, cfg, params, order: list[str], total_steps: int, *,
                   optimizer_factory: OptimizerFactory
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of `optimizer_cfg` split into `cfg`'s groups.

  Args:
    optimizer_cfg: the `optimizer` config block.
    cfg: the `transfer` config block.
    params: the model's params (arrays or ShapeDtypeStructs), for their labels.
    order: top-level module names from input to output (`groups.call_order`).
    total_steps: length of the run, for the schedule.
    optimizer_factory: `(optimizer config block, total steps) -> (tx, schedule)`, e.g.
      `cnnrnn.train.optim.make_optimizer`; called once per group (with clipping off: it is
      global, applied here) and once for the schedule.

  Returns:
    (transformation, the head's learning-rate schedule).
  """
  validate(cfg)
  inner_cfg = ml_collections.ConfigDict(
      optimizer_cfg.to_dict() if hasattr(optimizer_cfg, "to_dict") else dict(optimizer_cfg))
  inner_cfg.clip_norm = 0.0  # Clipping is global, outside the groups.
  labels, scales = group_labels(params, order, cfg)
  # A frozen-then-unfrozen group must not move before its step, weight decay included: with
  # coupled decay (all but adamw) the decay term is added before the gradient gate, so the
  # momentum stays zero too; adamw's decoupled decay is stopped by the gate on the updates.
  decay = float(optimizer_cfg.get("weight_decay") or 0.0)
  coupled_decay = decay if optimizer_cfg.name != "adamw" else 0.0
  gated_cfg = ml_collections.ConfigDict(inner_cfg.to_dict())
  if coupled_decay:
    gated_cfg.weight_decay = 0.0
  transforms = {}
  for group, scale in scales.items():
    if group == "frozen":
      transforms[group] = optax.set_to_zero()
      continue
    start = unfreeze_step(group, cfg) if cfg.strategy == "progressive" else 0
    inner, _ = optimizer_factory(gated_cfg if start else inner_cfg, total_steps)
    parts = [inner] if scale == 1.0 else [inner, optax.scale(scale)]
    if start:
      parts = [_zero_before(start), *parts, _zero_before(start)]
      if coupled_decay:
        parts.insert(0, optax.add_decayed_weights(coupled_decay))
    transforms[group] = optax.chain(*parts)
  tx = optax.multi_transform(transforms, labels)
  clip = optimizer_cfg.get("clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx, optimizer_factory(inner_cfg, total_steps)[1]


class LinearProbe:
  """A model whose backbone is frozen: every call runs in inference mode, backbone
  parameters under `stop_gradient`, mutable collections returned unchanged.

  It offers what the trainer and `cnnrnn.train.steps` use of a Flax module (`init`, `apply`,
  and the wrapped module's attributes), so the same jitted steps train it.

  Args:
    model: the Flax module.
    head: its head's top-level name.
  """

  def __init__(self, model: nn.Module, head: str = "head"):
    self.model = model
    self.head = head

  def __getattr__(self, name):
    return getattr(self.model, name)

  def init(self, *args, **kwargs):
    return self.model.init(*args, **kwargs)

  def apply(self, variables, *args, train: bool = False, mutable=False, **kwargs):
    del train  # Always inference mode: BatchNorm uses (and keeps) its running statistics.
    params = variables["params"]
    check_head(params, self.head)
    params = {k: v if k == self.head else jax.tree.map(jax.lax.stop_gradient, v)
              for k, v in params.items()}
    outputs = self.model.apply({**variables, "params": params}, *args, train=False, **kwargs)
    if mutable:
      names = [mutable] if isinstance(mutable, str) else list(mutable)
      return outputs, {c: variables[c] for c in names if c in variables}
    return outputs


def wrap_model(model: nn.Module, cfg):
  """`model`, or its `LinearProbe` when `cfg.strategy` is "linear_probe"."""
  return LinearProbe(model, cfg.head) if cfg.strategy == "linear_probe" else model
