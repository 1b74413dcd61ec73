"""Orbax checkpoints of the train state and the data-iterator state, verified on restore.

Each checkpoint step holds three items: `state` (the TrainState, carry included, restored
straight into its shardings), `data` (the Grain iterator state, JSON) and `meta` (JSON).
Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-write leaves the previous checkpoints intact; old ones are deleted only after a
newer one is committed.

`meta` holds what the step must read back as: a digest of every array of the state
(computed on the devices when the step is saved), each array's shape and dtype, a digest
of the data-iterator state, the batch size that state counts in, and a digest of `meta`
itself. Orbax and tensorstore keep no content checksums, so flipped bytes in an array
file, or a data position edited by hand, would otherwise load silently.

There is one restore path, `restore_step` (the trainer's `Checkpointer.restore_latest` and
every reader of a workdir through `restore_variables` use it). Any failure to read or
verify a step, whatever the file and whatever the error (JSON, tensorstore, CRC, shapes,
a missing or extra file, a digest, a non-finite state), makes it `CorruptCheckpoint`: the
trainer moves it to `directory`/set_aside (never deleting it) with one warning and falls
back to the previous step. Only a step whose `meta` is intact and whose recorded arrays
belong to another model is reported as that (a `ValueError`). A step written by this
version without its `meta` is corrupt; steps of older versions (no format mark) are
checked with what they have.

One module of ~600 lines on purpose: what a step holds (the digests written at save) and
the one path that verifies it on restore are a single format, changed together.
"""

import contextlib
import errno
import functools
import hashlib
import json
import logging as logging_lib
import math
import os
import re
import shutil
import sys
import time
import traceback
import warnings

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

SET_ASIDE_DIR = "set_aside"
# Written into set_aside/ when a run found no usable checkpoint and refused to start over;
# while it is there, later runs refuse too (until --start_over).
REFUSAL_FILE = "refused_start_over.json"
# Files every committed step has; a missing one makes the step unusable.
_REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt", "data/metadata")
# The format this version writes (recorded in Orbax's step metadata and in `meta`): every
# item is covered by a digest in `meta`, and `meta` by its own.
FORMAT = 2
_FORMAT_KEY = "cnnrnn_checkpoint_format"


class CorruptCheckpoint(Exception):
  """A checkpoint step cannot be used as it is on disk; the message says why."""


class NoUsableCheckpoint(RuntimeError):
  """Every checkpoint of an existing run failed its checks."""


def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x`, flattened, as uint32 words (narrower types widened)."""
  x = x.reshape(-1)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size < 4:
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)  # 8 bytes: two words.


def _leaf_digest(x: jax.Array) -> jax.Array:
  """A position-dependent 32-bit hash of the array's bits, summed modulo 2**32.

  Integer sums wrap and commute, so the result is the same whatever the sharding and
  reduction order; one changed bit changes it (but for a 2**-32 chance).
  """
  u = _as_uint32(x)
  h = u * np.uint32(0x9E3779B1) + jnp.arange(u.size, dtype=jnp.uint32) * np.uint32(0x85EBCA77)
  h = (h ^ (h >> 15)) * np.uint32(0x2C1B3C6D)
  return (h ^ (h >> 12)).sum(dtype=jnp.uint32)


def json_digest(value) -> str:
  """SHA-256 of `value` as JSON (keys sorted): a digest of a JSON item as it reads back."""
  text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
  return hashlib.sha256(text.encode()).hexdigest()


def state_digest(state) -> tuple[dict, jax.Array]:
  """({leaf path: uint32 digest}, whether every floating-point leaf is finite)."""
  leaves = jax.tree_util.tree_leaves_with_path(state)
  digests = {jax.tree_util.keystr(path): _leaf_digest(x) for path, x in leaves}
  finite = jnp.all(jnp.asarray([jnp.isfinite(x).all() for _, x in leaves
                                if jnp.issubdtype(x.dtype, jnp.floating)] or [True]))
  return digests, finite


class SaveTimer:
  """Says when `every_secs` seconds have passed since the last save (0: never).

  In a multi-process run the processes' clocks disagree, and all of them must save the
  same step: process 0 decides, at the steps where `sync` is True, and tells the others.
  """

  def __init__(self, every_secs: float):
    self.every_secs = float(every_secs or 0)
    self._last = time.monotonic()

  def saved(self) -> None:
    self._last = time.monotonic()

  def due(self, sync: bool = True) -> bool:
    if not self.every_secs:
      return False
    due = time.monotonic() - self._last >= self.every_secs
    if jax.process_count() > 1:
      if not sync:
        return False
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due


class Checkpointer:
  """Saves and restores (state, data_state) under `directory`.

  Args:
    directory: where checkpoints go (created if missing).
    max_to_keep: keep the newest this many checkpoints.
    keep_best: also keep, in `directory`/best, the one with the best `best_metric`.
    best_metric: metric name for `keep_best` (e.g. "accuracy" or "loss").
    best_mode: "max" or "min".
    async_save: write in a background thread while training goes on.
    batch_size: the global batch size, recorded with each step: the data-iterator state
      counts batches, so it means something else under another batch size.
    state_sharding: the state's shardings, for the jitted digest (None: jit's default).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, keep_best: bool = False,
               best_metric: str = "accuracy", best_mode: str = "max", async_save: bool = True,
               batch_size: int | None = None, state_sharding=None):
    if best_mode not in ("min", "max"):
      raise ValueError(f"checkpoint best_mode={best_mode!r}; allowed: 'min', 'max'")
    self.directory = os.path.abspath(directory)
    _install_filters()
    _checkpoint_dirs.update((self.directory, os.path.join(self.directory, "best")))
    self._latest = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True),
        item_handlers=self._handlers(),
    )
    self._best = None
    if keep_best:
      self._best = ocp.CheckpointManager(
          os.path.join(self.directory, "best"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode,
              enable_async_checkpointing=async_save, create=True),
          item_handlers=self._handlers(),
      )
    self.best_metric = best_metric
    self.batch_size = batch_size
    out = None
    if state_sharding is not None:
      mesh = jax.tree.leaves(state_sharding)[0].mesh
      out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._digest = jax.jit(state_digest, out_shardings=out)

  @staticmethod
  def _handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()}

  def _meta(self, step: int, state, data_state) -> dict:
    """The `meta` item of (`state`, `data_state`); FloatingPointError if not finite."""
    digests, finite = jax.device_get(self._digest(state))
    if not finite:
      raise FloatingPointError(
          f"The train state at step {step} is not finite; not saved. Last good checkpoint: "
          f"{self.latest_step()} in {self.directory}.")
    shapes = {jax.tree_util.keystr(path): [list(x.shape), str(x.dtype)]
              for path, x in jax.tree_util.tree_leaves_with_path(state)}
    meta = {"format": FORMAT, "digest": {k: int(v) for k, v in digests.items()},
            "shapes": shapes, "data_digest": json_digest(json.loads(json.dumps(data_state))),
            "batch_size": self.batch_size}
    return meta | {"meta_digest": json_digest(meta)}

  def _save(self, manager, step, state, data_state, **kwargs) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(self._meta(step, state, data_state)))
    manager.save(step, args=args, custom_metadata={_FORMAT_KEY: FORMAT}, **kwargs)

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    """Saves `step` (a no-op if it exists).

    Raises:
      FloatingPointError: the state is not finite.
      OSError: ENOSPC when the disk has less room than the checkpoint needs, before
        anything is written (a save that fills the disk midway fails in Orbax's threads
        with hundreds of lines of logs).
    """
    if step in self._latest.all_steps():
      return  # E.g. a preemption at the step that was just saved.
    self._check_room(step, state)
    self._save(self._latest, step, state, data_state)

  def _check_room(self, step: int, state) -> None:
    need = sum(x.nbytes for x in jax.tree.leaves(state)) * 1.1 + 2**20  # + metadata.
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise OSError(errno.ENOSPC, f"the disk is full: checkpoint step {step} needs about "
                    f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free", self.directory)

  def save_best(self, step: int, state, data_state: dict, metrics: dict) -> None:
    """Offers an evaluated state to the best-checkpoint slot (no-op without keep_best, and
    for a non-finite metric: a NaN model is never the best)."""
    if self._best is None or self.best_metric not in metrics:
      return
    value = float(metrics[self.best_metric])
    if not math.isfinite(value):
      logging.warning("Not keeping step %d as the best: %s=%s", step, self.best_metric, value)
      return
    try:
      self._save(self._best, step, state, data_state, metrics={self.best_metric: value})
    except FloatingPointError:
      logging.warning("Not keeping step %d as the best: its state is not finite", step)

  def restore_latest(self, abstract_state, *, start_over: bool = False):
    """Restores the newest checkpoint that passes every check, setting bad ones aside.

    Each step, newest first, goes through `restore_step`. One that fails is moved to
    `directory`/set_aside/ (never deleted) with one warning naming the problem. When
    checkpoints existed but none was usable, the refusal is recorded in set_aside/, and
    every later call refuses too until one with `start_over`.

    Args:
      abstract_state: ShapeDtypeStructs with shardings, as the state is wanted.
      start_over: when checkpoints exist (or existed) but none is usable, return None
        (train from step 0) instead of raising NoUsableCheckpoint.

    Returns:
      (step, state, data_state), or None when there is no usable checkpoint.

    Raises:
      ValueError: a checkpoint is intact but was written for another model or batch size.
      NoUsableCheckpoint: checkpoints exist or were set aside, none is usable, and not
        `start_over`.
    """
    with _quiet_orbax():  # Orbax reads each step's metadata too.
      for step in sorted(self._latest.all_steps(), reverse=True):
        try:
          state, data_state = restore_step(self._step_dir(step), step, abstract_state,
                                           batch_size=self.batch_size)
        except CorruptCheckpoint as e:
          self._set_aside(step, str(e))
        else:
          return step, state, data_state
    refusal = os.path.join(self.directory, SET_ASIDE_DIR, REFUSAL_FILE)
    set_aside = sorted(d for d in (os.listdir(os.path.dirname(refusal))
                                   if os.path.isdir(os.path.dirname(refusal)) else ())
                       if d != REFUSAL_FILE)
    if start_over:
      if os.path.exists(refusal) and jax.process_index() == 0:
        os.remove(refusal)
      return None
    if not set_aside:
      return None  # A new run.
    if jax.process_index() == 0:
      with open(refusal, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "set_aside": set_aside}) + "\n")
    raise NoUsableCheckpoint(
        f"No usable checkpoint in {self.directory}: every one failed its checks and is in "
        f"{os.path.dirname(refusal)} ({', '.join(set_aside)}). Training again from step 0 "
        f"would start this run over: pass --start_over to do that, or use a new --workdir.")

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _set_aside(self, step: int, problem: str) -> str:
    """Moves step `step` into set_aside/ (process 0; the others wait) and warns once."""
    target = os.path.join(self.directory, SET_ASIDE_DIR, f"{step}")
    if os.path.exists(target):
      target += time.strftime("-%Y%m%dT%H%M%S")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(self._step_dir(step), target)
      logging.warning("Checkpoint step %d is unusable (%s); moved it to %s and trying the "
                      "previous one.", step, problem, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._latest.reload()
    return target

  def restore(self, step: int, abstract_state):
    """`restore_step` of this directory's `step` (see there)."""
    return restore_step(self._step_dir(step), step, abstract_state, batch_size=self.batch_size)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    if self._best is not None:
      self._best.close()


# What Orbax logs beside a restore that this module reports itself, in one line: the
# item-level metadata file a step never has (the step's own is one folder up), the item
# metadata of a step then found corrupt, a step metadata file that does not parse.
_BENIGN_ORBAX_LOGS = ("Metadata file does not exist: ", "Failed to get item metadata from directory ",
                      "Failed to json parse Metadata file: ")
# Directories of `Checkpointer`s: their managers read each step's metadata in a thread of
# their own, whenever; a step whose metadata does not parse is reported by the restore.
_checkpoint_dirs: set[str] = set()
# Tensorstore's errors start with a status code: "DATA_LOSS: Error reading ...".
_TENSORSTORE_ERROR = re.compile(r"^[A-Z_]+: Error (opening|reading|decoding) ")
# Orbax's functions that read a checkpoint (not those that write one: a failed write is
# never dropped).
_READING = re.compile(r"read|deserial|restore|load", re.IGNORECASE)
_ORBAX_READS = ("_read_array_index_and_device_put", "_read_shard", "async_deserialize")
_restoring = 0  # Restores in progress (see _quiet_orbax).
_restore_failed = False  # Whether one failed in this process.
_filters_installed = False


def _from_orbax_read(e: BaseException | None) -> bool:
  """Whether `e`, or an exception behind it, is a read of a checkpoint by Orbax/tensorstore."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if _TENSORSTORE_ERROR.match(str(e)) or any(
        "/orbax/checkpoint/" in frame.filename and _READING.search(frame.name)
        for frame in traceback.extract_tb(e.__traceback__)):
      return True
    e = e.__cause__ or e.__context__
  return False


class _BenignOrbaxRecords(logging_lib.Filter):
  """Drops Orbax's log records that a restore reports itself (see `_quiet_orbax`)."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    if record.name == "absl":
      message = record.getMessage()
      if message.startswith(_BENIGN_ORBAX_LOGS[-1]):
        path = message[len(_BENIGN_ORBAX_LOGS[-1]):].split(",", 1)[0]
        return not (_restoring or os.path.dirname(os.path.dirname(path)) in _checkpoint_dirs)
      return not (_restoring and message.startswith(_BENIGN_ORBAX_LOGS))
    if not (_restoring or _restore_failed):
      return True
    exc = record.exc_info[1] if record.exc_info else None
    return not ("exception was never retrieved" in record.getMessage() and _from_orbax_read(exc))


def _is_abandoned_read(unraisable) -> bool:
  exc, obj = unraisable.exc_value, unraisable.object
  orbax_coroutine = "/orbax/" in getattr(getattr(obj, "cr_code", None), "co_filename", "")
  loop_closed = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
  return orbax_coroutine or loop_closed or _from_orbax_read(exc)


def _install_filters() -> None:
  """Filters for what Orbax reports beside a restore (see `_quiet_orbax`); once."""
  global _filters_installed
  # Set again each time: a test framework may reset the warning filters between tests.
  # The warning names the coroutine but is attributed to whatever code runs when it is
  # collected: matched by Orbax's reading coroutines' names.
  warnings.filterwarnings("ignore", message=f"coroutine '({'|'.join(_ORBAX_READS)})' was never "
                          "awaited", category=RuntimeWarning)
  if _filters_installed:
    return
  _filters_installed = True
  records = _BenignOrbaxRecords()
  logging_lib.getLogger("absl").addFilter(records)
  logging_lib.getLogger("asyncio").addFilter(records)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not ((_restoring or _restore_failed) and _is_abandoned_read(unraisable)):
      previous(unraisable)

  sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax():
  """Leaves the report of a restore, or of its failure, to this module's one line.

  Within a restore, Orbax's benign warnings (`_BENIGN_ORBAX_LOGS`) are dropped. When one
  array of a checkpoint fails to read, Orbax gives up on the others while tensorstore
  still reads them; each then reports its own error with the full tensorstore spec (~60
  lines apiece), during the restore or long after it, whenever it finishes or is
  garbage-collected: asyncio's "Task/Future exception was never retrieved" ERROR records,
  "Exception ignored in: <coroutine ...>", "RuntimeError: Event loop is closed" from reads
  that finished after Orbax's event loop was closed, and "coroutine ... was never awaited"
  for those not started. These are dropped during restores and, once one failed, after
  them; every other unraisable exception, log record and warning goes through as before.
  """
  global _restoring, _restore_failed
  _install_filters()
  _restoring += 1
  try:
    yield
  except BaseException:
    _restore_failed = True
    raise
  finally:
    _restoring -= 1


def _first_line(e: Exception) -> str:
  """The gist of a (tensorstore) error: its first line, without the spec dump."""
  text = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
  return f"{type(e).__name__}: {text}"[:300]


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _read_meta(step_dir: str, step: int) -> dict | None:
  """The verified `meta` item of a step, or None for a step of an older version without one.

  Raises:
    CorruptCheckpoint: a required file is missing or unreadable, or `meta` does not match
      its own digest, or this version's step lacks it.
  """
  if not os.path.isdir(step_dir):
    raise CorruptCheckpoint(f"step {step} is not a directory")
  missing = [f for f in _REQUIRED if not os.path.exists(os.path.join(step_dir, f))]
  if missing:
    raise CorruptCheckpoint(f"step {step} lacks {', '.join(missing)}")
  try:
    root = _read_json(os.path.join(step_dir, "_CHECKPOINT_METADATA"))
    written = (root.get("custom_metadata") or {}).get(_FORMAT_KEY)
    meta_listed = "meta" in (root.get("item_handlers") or {})
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpoint(f"step {step}: _CHECKPOINT_METADATA is unreadable: "
                            f"{_first_line(e)}") from e
  meta_path = os.path.join(step_dir, "meta", "metadata")
  if not os.path.lexists(meta_path):
    if written or meta_listed:
      raise CorruptCheckpoint(f"step {step} lacks meta/metadata, the digests written with it")
    return None  # Written before checkpoints had a `meta` item.
  try:
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("digest"), dict):
      raise ValueError("not a JSON object with a 'digest'")
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpoint(f"step {step}: meta/metadata is unreadable: {_first_line(e)}") from e
  if written or "format" in meta or "meta_digest" in meta:
    body = {k: v for k, v in meta.items() if k != "meta_digest"}
    if meta.get("meta_digest") != json_digest(body) or meta.get("format") != FORMAT:
      raise CorruptCheckpoint(f"step {step}: meta/metadata differs from what was saved "
                              "(its own digest does not match: corrupt data)")
  return meta


def _leaves(tree, prefix: str = "") -> dict:
  """{key path: leaf} of a pytree, paths as `jax.tree_util.keystr` writes them after `prefix`."""
  return {prefix + jax.tree_util.keystr(path): x
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _parts_leaves(parts: dict) -> dict:
  """{".part[...]": leaf} of {part: tree}: the paths a TrainState's leaves have."""
  return {k: v for part, tree in parts.items() for k, v in _leaves(tree, f".{part}").items()}


def _check_fits(step_dir: str, step: int, meta: dict | None, abstract_state) -> None:
  """Checks that the step holds the arrays of `abstract_state`.

  With an intact `meta`, its record of the saved arrays decides: a mismatch means another
  model (ValueError). Without one (a step of an older version), Orbax's metadata of the
  model's collections is compared instead.
  """
  where = f"Checkpoint step {step} in {os.path.dirname(step_dir)}"
  advice = "Use a new --workdir or the matching config."
  if meta is not None and isinstance(meta.get("shapes"), dict):
    saved = meta["shapes"]
    wanted = _leaves(abstract_state)
    for key in sorted(saved.keys() ^ wanted.keys()):
      owner = "the checkpoint" if key in saved else "the model"
      raise ValueError(f"{where}: {key} exists only in {owner}: it was written for another "
                       f"model. {advice}")
    for key, want in wanted.items():
      shape, dtype = saved[key]
      if tuple(shape) != tuple(want.shape) or dtype != str(np.dtype(want.dtype)):
        raise ValueError(f"{where}: {key} is {dtype}{tuple(shape)} but the model needs "
                         f"{np.dtype(want.dtype)}{tuple(want.shape)}. {advice}")
    return
  try:
    with ocp.StandardCheckpointer() as ckptr:
      saved_tree = ckptr.metadata(os.path.join(step_dir, "state")).item_metadata.tree
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpoint(f"step {step}: its metadata is unreadable: {_first_line(e)}") from e
  is_leaf = lambda m: hasattr(m, "shape")
  for part in ("params", "model_state"):
    saved = {jax.tree_util.keystr(k): v for k, v in
             jax.tree_util.tree_leaves_with_path(saved_tree.get(part) or {}, is_leaf=is_leaf)}
    wanted = _leaves(getattr(abstract_state, part))
    for key in sorted(saved.keys() ^ wanted.keys()):
      owner = "the checkpoint" if key in saved else "the model"
      raise ValueError(f"{where}: {part}{key} exists only in {owner}: it was written for "
                       f"another model. {advice}")
    for key, want in wanted.items():
      have = tuple(getattr(saved[key], "shape", ()) or ())
      if have != tuple(want.shape):
        raise ValueError(f"{where}: {part}{key} has shape {have} but the model needs "
                         f"{tuple(want.shape)}. {advice}")


def restore_step(step_dir: str, step: int, abstract_state=None, *, batch_size: int | None = None,
                 parts: tuple[str, ...] | None = None):
  """Restores and verifies one checkpoint step: the one restore path.

  Args:
    step_dir: the step's folder (`<checkpoints>/<step>`).
    step: its number (for messages).
    abstract_state: ShapeDtypeStructs (with shardings) of the whole train state; or None
      to read `parts` of it as host arrays in the shapes it was saved with.
    batch_size: the global batch size of this run: the data position counts batches, so
      it must be the one the step was written with (None: not checked).
    parts: with `abstract_state=None`, the top-level fields to read (e.g.
      ("params", "model_state")).

  Returns:
    (state, data_state): the TrainState (or {part: tree} for `parts`) and the
    data-iterator state, each equal to what was saved.

  Raises:
    CorruptCheckpoint: any file missing or unreadable, an item that does not match its
      digest, a non-finite state.
    ValueError: an intact step written for another model (the message names the first
      mismatching entry) or with another batch size.
  """
  step_dir = os.path.abspath(step_dir)  # Orbax reads a relative path as no checkpoint.
  with _quiet_orbax():
    meta = _read_meta(step_dir, step)
    try:
      data_state = _read_json(os.path.join(step_dir, "data", "metadata"))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpoint(f"step {step}: data/metadata is unreadable: {_first_line(e)}") from e
    if meta is not None and "data_digest" in meta and json_digest(data_state) != meta["data_digest"]:
      raise CorruptCheckpoint(f"step {step}: the data-iterator state (data/metadata) differs "
                              "from what was saved (digest mismatch: corrupt data)")
    if meta is not None and meta.get("batch_size") and batch_size and meta["batch_size"] != batch_size:
      raise ValueError(
          f"Checkpoint step {step} in {os.path.dirname(step_dir)} was written with batch_size="
          f"{meta['batch_size']}; its data position counts batches of that size, so it cannot "
          f"resume with batch_size={batch_size}. Use batch_size={meta['batch_size']} or a "
          f"new --workdir.")
    if abstract_state is not None:
      _check_fits(step_dir, step, meta, abstract_state)
    try:
      if abstract_state is not None:
        with ocp.StandardCheckpointer() as ckptr:
          state = ckptr.restore(os.path.join(step_dir, "state"), abstract_state)
        read = _leaves(state)
      else:
        state = _restore_parts(os.path.join(step_dir, "state"), parts or ("params", "model_state"))
        read = _parts_leaves(state)
      digests, finite = _verify_digests(read)
    except Exception as e:  # pylint: disable=broad-except
      # What fits was checked above: whatever fails now is the files (tensorstore's errors,
      # Orbax's metadata).
      raise CorruptCheckpoint(f"step {step} is unreadable: {_first_line(e)}") from e
  if meta is not None:
    expected = meta["digest"]
    if abstract_state is None:  # Only these parts were read: all of them must be there.
      prefixes = tuple(f".{p}[" for p in (parts or ("params", "model_state")))
      expected = {k: v for k, v in expected.items() if k.startswith(prefixes)}
    bad = sorted(k for k in expected.keys() | digests.keys()
                 if k not in digests or expected.get(k) != digests[k])
    if bad:
      raise CorruptCheckpoint(
          f"step {step}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} read back "
          f"different from what was saved (digest mismatch: corrupt data)")
  if not finite:
    raise CorruptCheckpoint(f"step {step}: the restored state is not finite")
  return state, data_state


def _digests_and_finite(tree: dict):
  finite = jnp.all(jnp.asarray([jnp.isfinite(x).all() for x in tree.values()
                                if jnp.issubdtype(x.dtype, jnp.floating)] or [True]))
  return {k: _leaf_digest(x) for k, x in tree.items()}, finite


@functools.lru_cache(maxsize=8)
def _jitted_digests(out_sharding):
  return jax.jit(_digests_and_finite, out_shardings=out_sharding)


def _verify_digests(leaves: dict) -> tuple[dict, bool]:
  """({path: digest}, all floating leaves finite) of `leaves`, computed where they are."""
  out = None
  sharding = getattr(next(iter(leaves.values()), None), "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):  # Replicated: every process reads it.
    out = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  digests, finite = jax.device_get(_jitted_digests(out)(leaves))
  return {k: int(v) for k, v in digests.items()}, bool(finite)


def _restore_parts(path: str, parts: tuple[str, ...]) -> dict:
  """The top-level fields `parts` of a saved state, as host numpy arrays."""
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    wanted = {p: tree.get(p) or {} for p in parts}
    is_leaf = lambda m: hasattr(m, "shape")
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted,
                                is_leaf=is_leaf)
    item = jax.tree.map(lambda m: np.zeros((), m.dtype), wanted, is_leaf=is_leaf)
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return {p: restored.get(p) or {} for p in parts}


def checkpoint_steps(directory: str) -> list[int]:
  """The committed steps under `directory`, ascending."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


def restore_variables(directory: str, which: str = "latest",
                      parts: tuple[str, ...] = ("params", "model_state")):
  """Reads a run's parts (params and model state) through `restore_step`, for readers of a
  workdir that do not own it (sample, translate, transfer, analysis).

  With "latest" or "best", a step that fails its checks is skipped with one warning
  naming the problem and the previous one is tried; it is left in place (the training run
  that owns the workdir sets it aside). A step asked for by number must pass.

  Args:
    directory: the run's checkpoints folder (`<workdir>/checkpoints`).
    which: "latest", "best" (the newest under `directory`/best) or a step number.
    parts: top-level fields of the train state to read.

  Returns:
    (step, {part: tree of numpy arrays}).

  Raises:
    FileNotFoundError: no checkpoints.
    ValueError: `which` is none of the above, or no checkpoint passes its checks.
  """
  root = os.path.join(directory, "best") if which == "best" else directory
  steps = checkpoint_steps(root)
  if not steps:
    raise FileNotFoundError(f"No checkpoints in {root}")
  if which not in ("latest", "best"):
    if not str(which).isdigit() or int(which) not in steps:
      raise ValueError(f"--checkpoint={which!r}; allowed: latest, best or one of the steps {steps}")
    candidates = [int(which)]
  else:
    candidates = steps[::-1]
  problems = []
  for step in candidates:
    try:
      state, _ = restore_step(os.path.join(root, str(step)), step, None, parts=parts)
    except CorruptCheckpoint as e:
      problems.append(str(e))
      if len(candidates) > 1:
        logging.warning("Checkpoint step %d in %s is unusable (%s); trying the previous one.",
                        step, root, e)
      continue
    return step, state
  raise ValueError(f"No usable checkpoint in {root}: {'; '.join(problems)}")
