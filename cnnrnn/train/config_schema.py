"""Every config field checked before anything is read or compiled.

The schema is `default_config()` itself: a field's default gives its type, `RANGES` its
allowed values, and a field the defaults do not know is an error naming the closest
known ones (difflib). Blocks whose fields belong to something else are read from their
owners' declarations, so that a new model, task, dataset option or optimizer option
touches nothing here:

- `model.*`: the model constructor's keyword arguments (its signature).
- `task.*`: the task's dataclass fields, its `check_fields` and its `metric_names`
  (`cnnrnn.tasks`, for `checkpoint.best_metric`).
- `dataset.*`: besides the defaults, the options dataset readers declare
  (`cnnrnn.data.options`, gathered by `cnnrnn.data.config_options()`).
- `optimizer.*`: besides the defaults, `cnnrnn.train.optim.CONFIG_OPTIONS`.

`validate(config)` raises one ValueError naming the field, its value and what is
allowed. It traces and compiles nothing.
"""

import dataclasses
import difflib
import inspect
import math
from typing import Any

import jax.numpy as jnp
import ml_collections

from cnnrnn import data
from cnnrnn import models
from cnnrnn import tasks
from cnnrnn.data import options
from cnnrnn.models import stateful
from cnnrnn.train import optim
from cnnrnn.train.defaults import default_config

# The names `model.dtype` / `model.param_dtype` take, and what they mean.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Range:
  """Allowed numbers: low/high bounds (None: unbounded), each inclusive or not."""

  low: float | None = None
  high: float | None = None
  low_inclusive: bool = True
  high_inclusive: bool = False
  allow_none: bool = False

  def ok(self, v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return False
    if self.low is not None and (v < self.low or (v == self.low and not self.low_inclusive)):
      return False
    return self.high is None or v < self.high or (v == self.high and self.high_inclusive)

  def __str__(self) -> str:
    lo = "-inf" if self.low is None else f"{self.low:g}"
    hi = "inf" if self.high is None else f"{self.high:g}"
    text = (f"a finite number in {'[' if self.low_inclusive else '('}{lo}, {hi}"
            f"{']' if self.high_inclusive else ')'}")
    return text + (" or None" if self.allow_none else "")


_POSITIVE = Range(0, None, low_inclusive=False)
_NON_NEGATIVE = Range(0, None)
_AT_LEAST_ONE = Range(1, None)
_FRACTION = Range(0, 1)  # [0, 1)
RANGES = {
    "seed": _NON_NEGATIVE,
    "batch_size": _AT_LEAST_ONE,
    "eval_batch_size": _AT_LEAST_ONE,
    "num_epochs": _NON_NEGATIVE,
    "num_train_steps": _NON_NEGATIVE,
    "grad_accum_steps": _AT_LEAST_ONE,
    "optimizer.learning_rate": _POSITIVE,
    "optimizer.momentum": _FRACTION,
    "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.warmup_steps": _NON_NEGATIVE,
    "optimizer.clip_norm": Range(0, None, allow_none=True),
    "optimizer.b1": _FRACTION,
    "optimizer.b2": _FRACTION,
    "optimizer.eps": _POSITIVE,
    "optimizer.decay_factor": _POSITIVE,
    "optimizer.decay_rate": _POSITIVE,
    "optimizer.decay_begin": _NON_NEGATIVE,
    "optimizer.decay_every": _AT_LEAST_ONE,
    "log_every_steps": _NON_NEGATIVE,
    "eval_every_steps": _NON_NEGATIVE,
    "checkpoint_every_steps": _NON_NEGATIVE,
    "checkpoint.max_to_keep": _AT_LEAST_ONE,
    "checkpoint.every_secs": _NON_NEGATIVE,
    "profile_steps": _NON_NEGATIVE,
    "dataset.crop_fraction": Range(0, 1, low_inclusive=False, high_inclusive=True),
    "dataset.read_threads": _AT_LEAST_ONE,
    "dataset.pad_to": Range(1, None, allow_none=True),
    "dataset.image_size": Range(1, None, allow_none=True),
}
CHOICES = {
    "checkpoint.best_mode": ("min", "max"),
    "dataset.cache": (True, False, "auto"),
    "dataset.augment": ("none", "crop_flip", "random_resized_crop"),
}
# Model keyword arguments (by name) with ranges other than "an integer >= 1".
MODEL_RANGES = {"pool_every": _NON_NEGATIVE, "init_scale": Range(0, None, False, allow_none=True)}


def _error(field: str, value, allowed: str) -> ValueError:
  return ValueError(f"{field}={value!r}; allowed: {allowed}")


def flat_fields(config) -> dict[str, Any]:
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out |= {f"{k}.{kk}": vv for kk, vv in flat_fields(v).items()}
    else:
      out[k] = v
  return out


def _unknown(field: str, known) -> ValueError:
  close = difflib.get_close_matches(field, list(known), n=3, cutoff=0.6)
  block = field.rsplit(".", 1)[0]
  siblings = sorted(k for k in known if k.rsplit(".", 1)[0] == block)
  if close:
    hint = f"did you mean {' or '.join(close)}?"
  else:
    hint = f"known fields here: {', '.join(siblings)}"
  return ValueError(f"{field} is not a config field; {hint}")


def _check_type(field: str, value, default) -> None:
  """`value` must have the type of the default (ints for floats too)."""
  if default is None or value is None:
    return
  if isinstance(default, bool):
    ok = isinstance(value, bool)
    kind = "True or False"
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
    kind = "an integer"
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    kind = "a number"
  elif isinstance(default, str):
    ok = isinstance(value, str)
    kind = "a string"
  elif isinstance(default, (tuple, list)):
    ok = isinstance(value, (tuple, list))
    kind = "a tuple"
  else:
    return
  if not ok:
    raise _error(field, value, kind)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field of `config` against the defaults' schema and the model's signature.

  Raises:
    ValueError: naming the first bad field, its value and the allowed values.
  """
  defaults = flat_fields(default_config())
  fields = flat_fields(config)
  declared = {f"dataset.{k}": o for k, o in data.config_options().items()} | {
      f"optimizer.{k}": o for k, o in options.merge(optim.CONFIG_OPTIONS).items()}
  declared = {k: o for k, o in declared.items() if k not in defaults}
  choices = CHOICES | {k: o.choices for k, o in declared.items() if o.choices}
  ranges = RANGES | {k: Range(o.minimum, None, allow_none=True) for k, o in declared.items()
                     if o.minimum is not None}
  # A value of each field's type, for the type check (paths default to None but are strings).
  examples = defaults | {k: o.type() for k, o in declared.items()} | {
      "dataset.data_dir": "", "dataset.manual_dir": ""}
  known = set(defaults) | set(declared)
  for field, value in fields.items():
    if field.split(".", 1)[0] in ("model", "task") and field not in ranges:
      continue  # Checked against the model's / task's own fields below.
    if field not in known and field not in ranges:
      raise _unknown(field, known)
    if field in choices:
      if value not in choices[field] and not (value is None and field in declared):
        raise _error(field, value, ", ".join(map(repr, choices[field])))
      continue
    _check_type(field, value, examples.get(field))
    rng = ranges.get(field)
    if rng is not None and not (value is None and rng.allow_none) and not rng.ok(value):
      raise _error(field, value, str(rng))
  if not fields.get("num_train_steps") and not fields.get("num_epochs"):
    raise ValueError("num_train_steps=0 and num_epochs=0: set one of them to a count >= 1")
  _check_best_metric(config)
  _check_task(config)
  _check_task_fits_model(config)
  model_fields = {k[len("model."):]: v for k, v in fields.items()
                  if k.startswith("model.") and k != "model.name"}
  # A mapping-valued argument (e.g. video_classifier's encoder_kwargs) is one argument.
  nested = {k.split(".", 1)[0] for k in model_fields if "." in k}
  check_model_kwargs(config.model.name, {k: v for k, v in model_fields.items() if "." not in k}
                     | {k: config.model[k].to_dict() for k in nested})


def _check_best_metric(config) -> None:
  ckpt = config.get("checkpoint", ml_collections.ConfigDict())
  metric = ckpt.get("best_metric", "accuracy")
  task = config.task.name
  values = {k: v for k, v in config.task.to_dict().items() if k != "name"}
  known = tasks.metric_names(task, values) if task in tasks.names() else None
  # The default "accuracy" is only used with keep_best; other tasks' configs set their own.
  if known is not None and (ckpt.get("keep_best", False) or metric != "accuracy"):
    if metric not in known:
      raise _error("checkpoint.best_metric", metric,
                   f"a metric task {task!r} logs: {', '.join(known)}")


def _check_task(config) -> None:
  """Names and types against the task's dataclass fields, then its own `check_fields`."""
  name = config.task.name
  task_fields = tasks.fields(name)  # Unknown task names fail here, listing them.
  defaults = tasks.field_defaults(name)
  values = {k: v for k, v in config.task.to_dict().items() if k != "name"}
  for k, v in values.items():
    if k not in task_fields:
      raise _unknown(f"task.{k}", {f"task.{f}" for f in task_fields})
    _check_type(f"task.{k}", v, defaults.get(k))
  tasks.check_fields(name, values)


def _check_task_fits_model(config) -> None:
  """A task that carries a recurrent state across batches needs a stateful model."""
  task = config.task.name
  if not getattr(tasks.task_class(task), "stateful", False):
    return
  ctor = models.get_constructor(config.model.name)  # Unknown names fail here, listing them.
  if not stateful.is_stateful(getattr(ctor, "module_class", ctor)):
    allowed = [n for n in models.names() if stateful.is_stateful(
        getattr(models.get_constructor(n), "module_class", models.get_constructor(n)))]
    raise ValueError(f"task.name={task!r} carries a recurrent state across batches, but "
                     f"model.name={config.model.name!r} does not (cnnrnn.models.stateful); "
                     f"allowed models: {', '.join(allowed)}")


def check_model_kwargs(name: str, kwargs: dict) -> None:
  """Checks the keyword arguments of model `name` against its constructor, before tracing.

  Types follow the constructor's defaults; integers (and sequences of them) must be >= 1
  (>= 0 where the constructor's default is 0) unless `MODEL_RANGES` says otherwise;
  `*dropout*` rates lie in [0, 1); dtypes are names in DTYPES.

  Raises:
    ValueError: naming `model.FIELD`, its value and what is allowed.
  """
  try:
    ctor = models.get_constructor(name)
  except ValueError as e:
    raise ValueError(f"model.name={name!r}: {e}") from None
  signature = inspect.signature(ctor).parameters.values()
  if any(p.kind is p.VAR_KEYWORD for p in signature) and hasattr(ctor, "module_class"):
    # A constructor that forwards **kwargs (a variant table) to a module: its fields too.
    signature = [*signature, *inspect.signature(ctor.module_class).parameters.values()]
  params = {p.name: p for p in signature
            if p.name not in ("parent", "name") and p.kind is not p.VAR_KEYWORD}
  for key, value in kwargs.items():
    field = f"model.{key}"
    if key not in params:
      raise _unknown(field, {f"model.{p}" for p in params})
    default = params[key].default
    if key in ("dtype", "param_dtype"):
      if value not in DTYPES:
        raise _error(field, value, ", ".join(DTYPES))
      continue
    if value is None:
      continue
    if "dropout" in key:
      if not _FRACTION.ok(value):
        raise _error(field, value, str(_FRACTION))
      continue
    if default is not inspect.Parameter.empty and default is not None:
      _check_type(field, value, default)
    # Counts and sizes: >= 1, or >= 0 where the constructor's own default is 0 (an index
    # such as a padding id, or "off").
    defaults = default if isinstance(default, (tuple, list)) else (default,)
    zero_ok = any(d == 0 and not isinstance(d, bool) for d in defaults if isinstance(d, int))
    numbers = value if isinstance(value, (tuple, list)) else (value,)
    for n in numbers:
      if isinstance(n, bool) or not isinstance(n, (int, float)):
        continue
      rng = MODEL_RANGES.get(key)
      if rng is None and isinstance(n, int):
        rng = _NON_NEGATIVE if zero_ok else _AT_LEAST_ONE
      if rng is not None and not rng.ok(n):
        allowed = str(rng) if key in MODEL_RANGES else f"integers >= {0 if zero_ok else 1}"
        raise _error(field, value, allowed)
