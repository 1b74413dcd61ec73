"""Orbax checkpoints of the train state and the data-iterator state.

Each checkpoint step holds two items: `state` (the TrainState, restored straight into
its shardings) and `data` (the Grain iterator state, JSON). Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-write leaves the
previous checkpoints intact; old ones are deleted only after a newer one is committed.
"""

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores (state, data_state) under `directory`.

  Args:
    directory: where checkpoints go (created if missing).
    max_to_keep: keep the newest this many checkpoints.
    keep_best: also keep, in `directory`/best, the one with the best `best_metric`.
    best_metric: metric name for `keep_best` (e.g. "accuracy" or "loss").
    best_mode: "max" or "min".
    async_save: write in a background thread while training goes on.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, keep_best: bool = False,
               best_metric: str = "accuracy", best_mode: str = "max", async_save: bool = True):
    if best_mode not in ("min", "max"):
      raise ValueError(f"checkpoint best_mode={best_mode!r}; allowed: 'min', 'max'")
    self._latest = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True),
        item_handlers=self._handlers(),
    )
    self._best = None
    if keep_best:
      self._best = ocp.CheckpointManager(
          os.path.join(os.path.abspath(directory), "best"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode,
              enable_async_checkpointing=async_save, create=True),
          item_handlers=self._handlers(),
      )
    self.best_metric = best_metric

  @staticmethod
  def _handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}

  @staticmethod
  def _args(state, data_state):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    self._latest.save(step, args=self._args(state, data_state))

  def save_best(self, step: int, state, data_state: dict, metrics: dict) -> None:
    """Offers an evaluated state to the best-checkpoint slot (no-op without keep_best)."""
    if self._best is not None and self.best_metric in metrics:
      self._best.save(step, args=self._args(state, data_state),
                      metrics={self.best_metric: float(metrics[self.best_metric])})

  def restore(self, step: int, abstract_state):
    """Restores (state, data_state) of `step` into `abstract_state`'s shapes and shardings.

    Raises:
      ValueError: the checkpoint's arrays do not fit the model (e.g. another config was
        used with this workdir); the message names the first mismatching entry.
    """
    self._check_shapes(step, abstract_state)
    try:
      restored = self._latest.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data=ocp.args.JsonRestore()),
      )
    except ValueError as e:
      raise ValueError(f"Checkpoint step {step} in {self._latest.directory} does not fit the "
                       f"model ({e}). Use a new --workdir or the matching config.") from e
    return restored["state"], restored["data"]

  def _check_shapes(self, step: int, abstract_state) -> None:
    saved = self._latest.item_metadata(step)["state"]
    if saved is None:  # No metadata: the restore itself reports a mismatch.
      return
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
            f"Checkpoint step {step} in {self._latest.directory}: {part}{key} exists only in "
            f"{where}: it was written for another model. Use a new --workdir or the matching config.")
      for key, want in wanted_leaves.items():
        have = tuple(getattr(saved_leaves[key], "shape", ()) or ())
        if have != tuple(want.shape):
          raise ValueError(
              f"Checkpoint step {step} in {self._latest.directory}: {part}{key} has shape {have} "
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
