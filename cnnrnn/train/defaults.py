"""The fields every experiment config has, with their defaults: the one place a default
value is written.

Experiment configs (configs/*.py) start from `default_config()` and override what they
reproduce; `--config.FIELD=VALUE` overrides any field from the command line. The trainer
reads a config through `complete(config)`, so a field a config lacks has this value.
`model.*` holds the model's keyword arguments: `add_model_fields` lets the command line set
any argument of the chosen model that the config file does not name.
"""

import inspect
import typing

import ml_collections

from cnnrnn import transfer


def default_config() -> ml_collections.ConfigDict:
  """The fields every experiment config has, with their defaults; configs override them."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet5"  # cnnrnn.models.names(); other fields are the model's kwargs.
  c.model.dtype = "float32"  # Computation: float32 | bfloat16 | float16 (params stay float32).

  c.task = ml_collections.ConfigDict()
  c.task.name = "classification"

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mnist"
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS_DATA_DIR or ~/tensorflow_datasets
  c.dataset.manual_dir = ml_collections.FieldReference(None, field_type=str)  # Offline: folder of original files.
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"  # Periodic evaluation, logged as split "eval".
  c.dataset.test_split = "test"  # Final evaluation, logged as split "test".
  c.dataset.pad_to = ml_collections.FieldReference(None, field_type=int)
  c.dataset.augment = "none"  # none | crop_flip | random_resized_crop (cnnrnn.data.image).
  # ImageNet-style: random-resized crops to image_size in training, resize + center crop
  # (shorter side image_size / crop_fraction) in evaluation; None keeps the images' size.
  c.dataset.image_size = ml_collections.FieldReference(None, field_type=int)
  c.dataset.crop_fraction = 0.875
  c.dataset.cache = "auto"  # Read splits under 1 GiB into memory once (True/False to force).
  c.dataset.read_threads = 2
  # Class subsets (cnnrnn.data.subsets): keep these labels, relabelled 0..k-1 (() = all), and
  # this many training examples of each (0 = all), chosen with subset_seed.
  c.dataset.classes = ()
  c.dataset.examples_per_class = 0
  c.dataset.subset_seed = 0

  c.batch_size = 128  # Global, over all devices and processes.
  c.eval_batch_size = 512
  c.num_epochs = 10
  c.num_train_steps = 0  # > 0 overrides num_epochs.
  c.grad_accum_steps = 1

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.clip_norm = 0.0

  # Start from pretrained weights, freeze / unfreeze (cnnrnn.transfer; source "" = scratch).
  c.transfer = transfer.default_config()

  c.log_every_steps = 100
  c.eval_every_steps = 0  # 0: only the final test evaluation.
  c.checkpoint_every_steps = 1000
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.max_to_keep = 3
  c.checkpoint.keep_best = False
  c.checkpoint.best_metric = "accuracy"
  c.checkpoint.best_mode = "max"
  c.checkpoint.async_save = True
  # Also save when this many seconds have passed since the last save (0: only by steps),
  # so that a kill -9 loses at most this much work whatever checkpoint_every_steps is.
  c.checkpoint.every_secs = 1800.0

  c.mesh = (("data", -1),)  # (axis, size) pairs; see cnnrnn.train.sharding.
  # Extra XLA_FLAGS, applied by the command line before the backend starts (e.g. CPU
  # backend choices measured in experiments/benchmarks); ignored by train_and_evaluate.
  c.xla_flags = ""
  # Keep freed host memory for reuse (cnnrnn.train.host_memory), applied by the command
  # line before the backend starts when JAX will compute on the CPU; ignored by
  # train_and_evaluate.
  c.reuse_host_memory = True
  # Hardware-specific kernels for the train and eval steps (cnnrnn.accel): "auto" (the
  # native CPU kernels on one CPU device where they build, else XLA's), "xla" or "cpu_native".
  c.accel = "auto"
  c.profile_steps = 0  # > 0: a profiler trace of that many steps into workdir/profile.
  c.progress_bar = True
  return c


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every field it lacks taken from `default_config()`.

  Blocks are merged field by field, except `model` and `task`, whose fields belong to the
  model constructor and the task (taken from `config` as they are).
  """

  def merge(base: dict, over: dict, top: bool) -> dict:
    out = dict(base)
    for k, v in over.items():
      nested = isinstance(v, dict) and isinstance(base.get(k), dict)
      out[k] = merge(base[k], v, False) if nested and not (top and k in ("model", "task")) else v
    return out

  return ml_collections.ConfigDict(merge(default_config().to_dict(), config.to_dict(), True))


def model_fields(name: str) -> dict[str, inspect.Parameter]:
  """The keyword arguments model `name` takes: its constructor's, and those of the module a
  variant constructor (`transformer(variant, **kwargs)`) forwards its kwargs to.

  Raises:
    ValueError: an unknown model name, listing the known ones.
  """
  from cnnrnn import models  # pylint: disable=g-import-not-at-top

  ctor = models.get_constructor(name)
  signature = list(inspect.signature(ctor).parameters.values())
  if any(p.kind is p.VAR_KEYWORD for p in signature) and hasattr(ctor, "module_class"):
    signature += inspect.signature(ctor.module_class).parameters.values()
  return {p.name: p for p in signature
          if p.name not in ("parent", "name") and p.kind is not p.VAR_KEYWORD}


_SCALARS = (bool, int, float, str)


def _placeholder(field: str, parameter: inspect.Parameter):
  """A config value with the type of model argument `parameter` (its default where it has a
  plain one; else a typed None), or None when the command line cannot set such a value."""
  default = parameter.default
  if field in ("dtype", "param_dtype"):
    return "float32"  # A name in config_schema.DTYPES, as the config stores dtypes.
  if isinstance(default, _SCALARS) or (isinstance(default, tuple) and default):
    return default
  kinds = [parameter.annotation, *typing.get_args(parameter.annotation)]
  kind = next((k for k in kinds if k in _SCALARS), None)
  if kind is not None and (default is None or default is inspect.Parameter.empty):
    return ml_collections.FieldReference(None, field_type=kind)
  return None


def add_model_fields(config: ml_collections.ConfigDict, fields) -> list[str]:
  """Adds to `config.model` each of `fields` it lacks that its model takes, so that
  `--config.model.FIELD=VALUE` can set any of them from the command line.

  Each added field holds the model's default (or a typed None), which the command line
  then overrides; the config is otherwise unchanged, so its config.json names only what
  the config file or the command line set.

  Args:
    config: an unlocked experiment config.
    fields: names of model keyword arguments (others, and an unknown `model.name`, are
      left for the command line's error message).

  Returns:
    The fields added.
  """
  try:
    known = model_fields(config.model.name)
  except (ValueError, AttributeError):
    return []
  added = []
  for field in fields:
    if field in config.model or field not in known:
      continue
    value = _placeholder(field, known[field])
    if value is not None:
      config.model[field] = value
      added.append(field)
  return added
