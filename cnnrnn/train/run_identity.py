"""A run's identity is its config: a resume may not change what was already computed.

The first run of a workdir writes `config.json`. A later run on a workdir with
checkpoints compares its config with that file field by field and refuses, listing each
changed field with its old and new value, when a field that shaped the steps already
taken differs (model, task, data, batch size, seed, optimizer, schedule, run length...),
unless `allow_changes` names it. Fields that only say how the run is watched or stored
(`FREE_FIELDS`) change freely. An accepted change is appended to `config_changes.jsonl`
and `config.json` becomes the new config.

The run length (`num_train_steps`, `num_epochs`) may be changed when allowed, but not to
end before the newest checkpoint, and not under a schedule whose shape depends on the
length (cosine, linear decay): the steps already taken followed the old curve, and no
single schedule can continue it exactly.
"""

import datetime
import difflib
import json
import os

import ml_collections
import numpy as np

from cnnrnn.train.defaults import default_config, model_fields

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"

# Fields (or whole blocks) that do not change the computation: logging, evaluation and
# checkpoint cadence, where files are, how the data is read, the device layout (a resume
# on another mesh is the same run up to float rounding), evaluation batch size.
FREE_FIELDS = (
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "checkpoint",
    "progress_bar", "profile_steps", "xla_flags", "reuse_host_memory", "mesh", "accel",
    "eval_batch_size", "dataset.data_dir", "dataset.manual_dir", "dataset.cache",
    "dataset.read_threads", "dataset.eval_split", "dataset.test_split", "dataset.tokenizer_dir",
)
LENGTH_FIELDS = ("num_train_steps", "num_epochs")
# Schedules whose learning rate at step s depends on the run's length.
LENGTH_DEPENDENT_SCHEDULES = ("cosine", "linear")
# Fields that cannot change even when allowed, and why.
FIXED_FIELDS = {
    "batch_size": "the data position saved with each checkpoint counts batches of the old size",
}


class ConfigChanged(ValueError):
  """A resume would change the computation of the run it continues."""


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out |= flatten(v, key + ".")
    else:
      out[key] = v
  return out


def as_json(config: ml_collections.ConfigDict) -> dict:
  """The config as config.json stores it (tuples as lists, dtypes as names)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _matches(field: str, names) -> bool:
  return any(field == n or field.startswith(n + ".") for n in names)


def saved_steps(workdir: str) -> list[int]:
  """Steps of the committed checkpoints in `workdir`/checkpoints, ascending."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _model_defaults(name) -> dict:
  """{"model.FIELD": default} of model `name`'s keyword arguments, as config.json stores them."""
  try:
    fields = model_fields(name)
  except (ValueError, TypeError):
    return {}
  out = {}
  for field, parameter in fields.items():
    value = parameter.default
    if field in ("dtype", "param_dtype") and value not in (None, parameter.empty):
      value = np.dtype(value).name  # As config.json names dtypes.
    if value is None or isinstance(value, (bool, int, float, str, tuple)):
      out[f"model.{field}"] = json.loads(json.dumps(value))  # Tuples as lists.
  return out


def changed_fields(old: dict, new: dict) -> dict[str, tuple]:
  """{field: (old, new)} over the flattened configs, FREE_FIELDS left out.

  A field missing from `old` (written before the field existed) counts as its default; a
  model argument missing from either (the config file did not name it, the command line
  may) counts as the model constructor's default.
  """
  old_flat, new_flat = flatten(old), flatten(new)
  defaults = flatten(as_json(default_config()))
  if old_flat.get("model.name") == new_flat.get("model.name"):
    defaults = _model_defaults(new_flat.get("model.name")) | defaults
  missing = object()
  changes = {}
  for field in sorted(old_flat.keys() | new_flat.keys()):
    if _matches(field, FREE_FIELDS):
      continue
    before = old_flat.get(field, defaults.get(field, missing))
    after = new_flat.get(field, defaults.get(field, missing))
    if before != after:
      changes[field] = (None if before is missing else before, None if after is missing else after)
  return changes


def check(config: ml_collections.ConfigDict, workdir: str, allow_changes=(),
          write: bool = True) -> None:
  """Refuses a resume that changes the computation; records the config.

  Args:
    config: the config of this run.
    workdir: the run's directory.
    allow_changes: fields (or blocks, e.g. "optimizer") that may differ from the saved
      config of a run with checkpoints.
    write: write config.json / config_changes.jsonl (process 0 only).

  Raises:
    ConfigChanged: listing every refused field as `field: old -> new` and what to do.
  """
  new = as_json(config)
  check_allowed(allow_changes, new)
  path = os.path.join(workdir, CONFIG_FILE)
  steps = saved_steps(workdir)
  changes = {}
  if steps and not os.path.exists(path):
    raise ConfigChanged(
        f"Cannot resume the run in {workdir}: it has checkpoints (newest: step {steps[-1]}) but "
        f"no {CONFIG_FILE}, the record of the config they were trained with, so a changed "
        f"config could not be told apart. Put the run's {CONFIG_FILE} back into {workdir} "
        f"(from a backup or a copy of the workdir; `python -m cnnrnn.main` wrote it on the "
        f"first run), or use a new --workdir.")
  if steps:
    try:
      with open(path, encoding="utf-8") as f:
        old = json.load(f)
    except ValueError as e:
      raise ConfigChanged(f"{path} is not valid JSON ({e}); it records the config of the run "
                          f"in {workdir}: restore it, or use a new --workdir.") from e
    changes = changed_fields(old, new)
    _refuse(changes, allow_changes, steps[-1], new, workdir)
  if not write:
    return
  if changes:
    with open(os.path.join(workdir, CHANGES_FILE), "a", encoding="utf-8") as f:
      f.write(json.dumps({
          "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "from_step": steps[-1], "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)  # Never a half-written config.json.


def check_allowed(allow_changes, config_json: dict) -> None:
  """Raises ConfigChanged for an `--allow_change` name that is no field or block of the config.

  Args:
    allow_changes: the names given.
    config_json: the config as `as_json` returns it.
  """
  fields = flatten(config_json)
  known = set(fields) | {f.rsplit(".", i)[0] for f in fields for i in range(1, f.count(".") + 1)}
  for name in (a.strip() for a in allow_changes):
    if name and name not in known:
      close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
      hint = f"did you mean {' or '.join(close)}? " if close else ""
      blocks = sorted({f.split(".")[0] for f in fields if "." in f})
      tops = sorted(f for f in fields if "." not in f and not _matches(f, FREE_FIELDS))
      raise ConfigChanged(
          f"--allow_change={name}: the config has no field or block {name!r}; {hint}allowed: "
          f"a field (e.g. {', '.join(tops)}, or BLOCK.FIELD) or a block "
          f"({', '.join(blocks)})")


def _refuse(changes: dict, allow_changes, step: int, new: dict, workdir: str) -> None:
  allow = [a.strip() for a in allow_changes if a.strip()]
  refused = {f: v for f, v in changes.items() if not _matches(f, allow)}
  lines = [f"  {f}: {old!r} -> {value!r}" for f, (old, value) in refused.items()]
  problems = []
  for field, reason in FIXED_FIELDS.items():
    if field in changes and field not in refused:
      problems.append(f"{field} cannot change: {reason}")
  length_changed = [f for f in LENGTH_FIELDS if f in changes]
  if length_changed and not any(f in refused for f in length_changed):
    schedule = flatten(new).get("optimizer.schedule", "constant")
    if schedule in LENGTH_DEPENDENT_SCHEDULES:
      problems.append(
          f"{'/'.join(length_changed)} cannot change under optimizer.schedule={schedule!r}: "
          f"its learning rate at every step depends on the run's length, and the {step} steps "
          f"already taken followed the old curve")
    new_steps = flatten(new).get("num_train_steps") or 0
    if 0 < new_steps < step:
      problems.append(f"num_train_steps={new_steps} ends before the newest checkpoint "
                      f"(step {step})")
  if refused:
    problems.insert(0, "these fields change the computation of the steps already taken:\n"
                    + "\n".join(lines) + "\nRun with the saved values, use a new --workdir, or "
                    "name the fields that may change with --allow_change=FIELD[,FIELD...] "
                    "(e.g. --allow_change=num_train_steps to extend the run)")
  if problems:
    raise ConfigChanged(f"Cannot resume the run in {workdir} (checkpoint at step {step}): "
                        + "; ".join(problems))
