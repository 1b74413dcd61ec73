"""Optimizers and learning-rate schedules from the `optimizer` config block.

Fields (all under `config.optimizer`):
  name: "sgd" | "momentum" | "nesterov" | "adam" | "adamw".
  learning_rate: peak learning rate (>= 0).
  momentum: for momentum/nesterov (default 0.9).
  b1, b2, eps: for adam/adamw.
  weight_decay: L2 added to the gradient for sgd/momentum/nesterov/adam (as in PyTorch's
    `weight_decay`), decoupled for adamw (Loshchilov & Hutter).
  schedule: "constant" | "step" | "cosine" | "linear" | "exponential" | "inverse_sqrt".
  warmup_steps: linear warm-up from 0 before the schedule.
  "inverse_sqrt" (Vaswani et al. 2017, fairseq's `inverse_sqrt`): after the warm-up, the
    learning rate falls as 1/sqrt(step), learning_rate * sqrt(warmup_steps / step) (without
    warm-up, learning_rate / sqrt(1 + step)). Vaswani et al.'s d_model^-0.5 * min(step^-0.5,
    step * warmup^-1.5) is this with learning_rate = (d_model * warmup_steps)^-0.5.
  decay_boundaries + decay_factor: for "step", multiply by decay_factor at each boundary
    (in steps, after warm-up), e.g. He et al.: (32000, 48000), 0.1.
  decay_rate + decay_begin + decay_every: for "exponential", multiply by decay_rate every
    decay_every steps from step decay_begin (Zaremba et al.'s per-epoch decay).
  clip_norm: clip gradients to this global norm (0/None: no clipping).
"""

import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear", "exponential", "inverse_sqrt")
# Fields only some optimizers / schedules read, beyond `default_config()`'s (with types).
CONFIG_OPTIONS = {"b1": float, "b2": float, "eps": float, "decay_boundaries": tuple,
                  "decay_factor": float, "decay_rate": float, "decay_begin": int,
                  "decay_every": int}


def _get(cfg, field, default):
  return cfg.get(field, default) if hasattr(cfg, "get") else getattr(cfg, field, default)


def validate(cfg) -> None:
  """Raises ValueError naming the bad `optimizer.*` field and the allowed values."""
  name = _get(cfg, "name", None)
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name={name!r}; allowed: {', '.join(OPTIMIZERS)}")
  schedule = _get(cfg, "schedule", "constant")
  if schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={schedule!r}; allowed: {', '.join(SCHEDULES)}")
  for field in ("learning_rate", "weight_decay", "warmup_steps", "clip_norm"):
    value = _get(cfg, field, 0) or 0
    if value < 0:
      raise ValueError(f"optimizer.{field}={value}; allowed: a number >= 0")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step."""
  lr = float(cfg.learning_rate)
  warmup = int(_get(cfg, "warmup_steps", 0) or 0)
  name = _get(cfg, "schedule", "constant")
  decay_steps = max(total_steps - warmup, 1)
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "step":
    factor = float(_get(cfg, "decay_factor", 0.1))
    main = optax.piecewise_constant_schedule(
        lr, {int(b): factor for b in _get(cfg, "decay_boundaries", ())}
    )
  elif name == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif name == "linear":
    main = optax.linear_schedule(lr, 0.0, decay_steps)
  elif name == "inverse_sqrt":  # optax has no such schedule. Steps here count from the warm-up.
    start = max(warmup, 1)
    main = lambda step: lr * jnp.sqrt(start / (step + start))
  else:  # exponential
    main = optax.exponential_decay(
        lr,
        transition_steps=int(_get(cfg, "decay_every", 1)),
        decay_rate=float(_get(cfg, "decay_rate", 1.0)),
        transition_begin=int(_get(cfg, "decay_begin", 0)),
        staircase=True,
    )
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (the optax transformation, its learning-rate schedule)."""
  validate(cfg)
  schedule = make_schedule(cfg, total_steps)
  name = cfg.name
  wd = float(_get(cfg, "weight_decay", 0.0) or 0.0)
  parts = []
  clip = _get(cfg, "clip_norm", None)
  if clip:
    parts.append(optax.clip_by_global_norm(float(clip)))
  if name == "adamw":
    parts.append(
        optax.adamw(schedule, b1=_get(cfg, "b1", 0.9), b2=_get(cfg, "b2", 0.999),
                    eps=_get(cfg, "eps", 1e-8), weight_decay=wd)
    )
  else:
    if wd:  # Coupled L2, as PyTorch's `weight_decay` for these optimizers.
      parts.append(optax.add_decayed_weights(wd))
    if name == "adam":
      parts.append(optax.adam(schedule, b1=_get(cfg, "b1", 0.9), b2=_get(cfg, "b2", 0.999),
                              eps=_get(cfg, "eps", 1e-8)))
    elif name == "sgd":
      parts.append(optax.sgd(schedule))
    else:
      parts.append(optax.sgd(schedule, momentum=_get(cfg, "momentum", 0.9),
                             nesterov=name == "nesterov"))
  return optax.chain(*parts), schedule
