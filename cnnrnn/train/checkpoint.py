"""Orbax checkpoints of the train state and the data-iterator state.

Each checkpoint step holds two items: `state` (the TrainState, restored straight into
its shardings) and `data` (the Grain iterator state, JSON). Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-write leaves the
previous checkpoints intact; old ones are deleted only after a newer one is committed.

A third item, `meta` (JSON), holds a digest of every array of the state, computed on the
devices when the step is saved, and the batch size the data-iterator state counts in.
Orbax and tensorstore keep no content checksums, so flipped bytes in an array file would
otherwise load silently; `restore_latest` recomputes the digest of what it read, checks
that the state is finite, and sets a checkpoint that fails any check aside into
`directory`/set_aside (never deleting it) and falls back to the previous one.
"""

import contextlib
import errno
import gc
import math
import os
import shutil
import sys
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

SET_ASIDE_DIR = "set_aside"
# Files every committed step has; a missing one makes the step unusable.
_REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt", "data")


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

  def _meta(self, step: int, state) -> dict:
    """The `meta` item of `state`; FloatingPointError if it is not finite."""
    digests, finite = jax.device_get(self._digest(state))
    if not finite:
      raise FloatingPointError(
          f"The train state at step {step} is not finite; not saved. Last good checkpoint: "
          f"{self.latest_step()} in {self.directory}.")
    return {"digest": {k: int(v) for k, v in digests.items()}, "batch_size": self.batch_size}

  def _args(self, step, state, data_state):
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(self._meta(step, state)))

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
    self._latest.save(step, args=self._args(step, state, data_state))

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
      args = self._args(step, state, data_state)
    except FloatingPointError:
      logging.warning("Not keeping step %d as the best: its state is not finite", step)
      return
    self._best.save(step, args=args, metrics={self.best_metric: value})

  def restore_latest(self, abstract_state, *, start_over: bool = False):
    """Restores the newest checkpoint that passes every check, setting bad ones aside.

    Each step, newest first, must have its files, fit `abstract_state`'s shapes, load,
    match the digest written when it was saved, and be finite. One that does not is
    moved to `directory`/set_aside/ (never deleted) with one warning naming the problem.

    Args:
      abstract_state: ShapeDtypeStructs with shardings, as the state is wanted.
      start_over: when checkpoints exist but none is usable, return None (train from
        step 0) instead of raising NoUsableCheckpoint.

    Returns:
      (step, state, data_state), or None when there is no usable checkpoint.

    Raises:
      ValueError: a checkpoint is intact but was written for another model or batch size.
      NoUsableCheckpoint: checkpoints exist, none is usable, and not `start_over`.
    """
    set_aside = []
    for step in sorted(self._latest.all_steps(), reverse=True):
      with _quiet_abandoned_reads():
        try:
          state, data_state = self.restore(step, abstract_state)
        except CorruptCheckpoint as e:
          problem = str(e)
        else:
          return step, state, data_state
      set_aside.append(self._set_aside(step, problem))
    if set_aside and not start_over:
      raise NoUsableCheckpoint(
          f"No usable checkpoint in {self.directory}: every one failed its checks and was "
          f"moved to {', '.join(set_aside)}. Training again from step 0 would start this run "
          f"over: pass --start_over to do that, or use a new --workdir.")
    return None

  def _set_aside(self, step: int, problem: str) -> str:
    """Moves step `step` into set_aside/ (process 0; the others wait) and warns once."""
    target = os.path.join(self.directory, SET_ASIDE_DIR, f"{step}")
    if os.path.exists(target):
      target += time.strftime("-%Y%m%dT%H%M%S")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
      logging.warning("Checkpoint step %d is unusable (%s); moved it to %s and trying the "
                      "previous one.", step, problem, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._latest.reload()
    return target

  def restore(self, step: int, abstract_state):
    """Restores and checks (state, data_state) of `step` into `abstract_state`'s shapes and
    shardings.

    Raises:
      CorruptCheckpoint: files missing, unreadable, not matching their digest, or a
        non-finite state.
      ValueError: the checkpoint's arrays do not fit the model, or it was written with
        another batch size; the message names the first mismatching entry.
    """
    step_dir = os.path.join(self.directory, str(step))
    missing = [f for f in _REQUIRED if not os.path.exists(os.path.join(step_dir, f))]
    if missing:
      raise CorruptCheckpoint(f"step {step} lacks {', '.join(missing)}")
    has_meta = os.path.isdir(os.path.join(step_dir, "meta"))  # Older checkpoints have none.
    try:
      self._check_shapes(step, abstract_state)
    except ValueError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpoint(f"step {step}: its metadata is unreadable: {_first_line(e)}") from e
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    if has_meta:
      items["meta"] = ocp.args.JsonRestore()
    try:
      restored = self._latest.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      # Shapes were checked above: whatever fails now is the files (tensorstore's errors).
      raise CorruptCheckpoint(f"step {step} is unreadable: {_first_line(e)}") from e
    state = restored["state"]
    digests, finite = jax.device_get(self._digest(state))
    if has_meta:
      meta = restored["meta"]
      bad = [k for k, v in digests.items() if meta["digest"].get(k) != int(v)]
      if bad:
        raise CorruptCheckpoint(
            f"step {step}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} read back "
            f"different from what was saved (digest mismatch: corrupt data)")
      saved_batch = meta.get("batch_size")
      if self.batch_size and saved_batch and saved_batch != self.batch_size:
        raise ValueError(
            f"Checkpoint step {step} in {self.directory} was written with batch_size="
            f"{saved_batch}; its data position counts batches of that size, so it cannot "
            f"resume with batch_size={self.batch_size}. Use batch_size={saved_batch} or a "
            f"new --workdir.")
    if not finite:
      raise CorruptCheckpoint(f"step {step}: the restored state is not finite")
    return state, restored["data"]

  def _check_shapes(self, step: int, abstract_state) -> None:
    saved = self._latest.item_metadata(step)["state"]
    if saved is None:
      raise CorruptCheckpoint(f"step {step} has no readable state metadata")
    # The model's own collections are nested dicts both here and in the metadata, so their
    # paths compare directly; the optimizer state mirrors them.
    for part in ("params", "model_state"):
      saved_leaves = {jax.tree_util.keystr(k): v
                      for k, v in jax.tree_util.tree_leaves_with_path(saved.get(part, {}))}
      wanted_leaves = {jax.tree_util.keystr(k): v
                       for k, v in jax.tree_util.tree_leaves_with_path(getattr(abstract_state, part))}
      for key in sorted(saved_leaves.keys() ^ wanted_leaves.keys()):
        where = "the checkpoint" if key in saved_leaves else "the model"
        raise ValueError(
            f"Checkpoint step {step} in {self.directory}: {part}{key} exists only in "
            f"{where}: it was written for another model. Use a new --workdir or the matching config.")
      for key, want in wanted_leaves.items():
        have = tuple(getattr(saved_leaves[key], "shape", ()) or ())
        if have != tuple(want.shape):
          raise ValueError(
              f"Checkpoint step {step} in {self.directory}: {part}{key} has shape {have} "
              f"but the model needs {tuple(want.shape)}. Use a new --workdir or the matching config.")

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    if self._best is not None:
      self._best.close()


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """Drops the "Exception ignored in: <coroutine ...>" reports of a failed restore.

  When one array of a checkpoint fails to read, Orbax abandons the reads of the others;
  each reports its own exception with the full tensorstore spec (~60 lines apiece) when
  it is garbage-collected. The failure itself is reported once, by `restore_latest`.
  """
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = hook


def _first_line(e: Exception) -> str:
  """The gist of a (tensorstore) error: its first line, without the spec dump."""
  text = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
  return f"{type(e).__name__}: {text}"[:300]


def step_directory(workdir: str, which: str = "latest") -> str:
  """The folder of one checkpoint of a `cnnrnn.main` workdir, for tools that read a trained
  model (`cnnrnn.sample`, `cnnrnn.translate`).

  Args:
    workdir: the run's workdir.
    which: "latest", "best" (the newest under checkpoints/best) or a step number.

  Raises:
    FileNotFoundError: no checkpoints.
    ValueError: `which` is none of the above.
  """
  root = os.path.join(workdir, "checkpoints")
  if which == "best":
    root = os.path.join(root, "best")
  steps = sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []
  if not steps:
    raise FileNotFoundError(f"No checkpoints in {root}")
  if which in ("latest", "best"):
    return os.path.join(root, str(steps[-1]))
  if not which.isdigit() or int(which) not in steps:
    raise ValueError(f"--checkpoint={which!r}; allowed: latest, best or one of the steps {steps}")
  return os.path.join(root, which)
