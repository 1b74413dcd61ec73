"""The corruption matrix: every file of a checkpoint step truncated, zeroed, flipped at a few
offsets, deleted, replaced by a directory, or (JSON files) edited so that it still parses.

Each case must end either in `CorruptCheckpoint` (the step is set aside, with one warning,
and the previous one used) or in a restore that is bitwise the saved state and data
position. Nothing else: no other exception, no "another model", no silent difference.
Most cases call the one restore path (`checkpoint.restore_step`) directly on a copy of one
step; a few go through `Checkpointer.restore_latest` and the whole trainer.

One trained run (module fixture) serves every case, each on its own copy of a step; the
restore path compiles its digest once. Orbax's reports of the reads it abandons after a
failure (asyncio ERROR records, "Exception ignored" unraisables, never-awaited coroutines)
must not reach the user: the step's one warning says what happened, so any of them fails
the test.
"""

import gc
import json
import logging
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from cnnrnn import train
from cnnrnn.train import checkpoint
from cnnrnn.train import runs
from configs import quickstart
from tests.helpers import override, restore_state

STEPS = 8
BATCH = 32

pytestmark = [pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("error:coroutine .* was never awaited:RuntimeWarning")]


def _config(data_dir, **overrides):
  c = quickstart.get_config()
  c.mesh = (("data", 1),)
  c.dataset.data_dir = data_dir
  c.progress_bar = False
  c.num_train_steps = STEPS
  c.batch_size = BATCH
  c.log_every_steps = 4
  c.checkpoint_every_steps = 4
  c.eval_every_steps = 0
  c.model.features = (4, 8)
  c.model.dense = (16,)
  c.model.dropout = 0.1
  c.checkpoint.async_save = False
  c.checkpoint.every_secs = 0.0
  return override(c, **overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
  """A run to STEPS with checkpoints 4 and 8; its abstract state (as the trainer asks for it)
  and what steps 4 and 8 hold."""
  workdir = tmp_path_factory.mktemp("straight")
  asked = {}
  original = checkpoint.Checkpointer.restore_latest

  def spy(self, abstract_state, **kwargs):
    asked["abstract"] = abstract_state
    return original(self, abstract_state, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(checkpoint.Checkpointer, "restore_latest", spy)
    train.train_and_evaluate(_config(data_dir), str(workdir))
  ckpts = workdir / "checkpoints"
  saved = {s: checkpoint.restore_step(str(ckpts / str(s)), s, asked["abstract"], batch_size=BATCH)
           for s in (4, STEPS)}
  return workdir, asked["abstract"], saved


def _files(step_dir: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file())


def _flip(offset_of):
  def flip(path: pathlib.Path):
    raw = bytearray(path.read_bytes())
    at = max(0, min(offset_of(len(raw)), len(raw) - 4))
    raw[at:at + 4] = bytes(b ^ 0xFF for b in raw[at:at + 4])
    path.write_bytes(bytes(raw))
  return flip


def _truncate(fraction):
  def truncate(path: pathlib.Path):
    with open(path, "r+b") as f:
      f.truncate(int(path.stat().st_size * fraction))
  return truncate


def _to_directory(path: pathlib.Path):
  path.unlink()
  path.mkdir()


DAMAGE = {
    "truncated_to_zero": _truncate(0),
    "truncated_to_half": _truncate(0.5),
    "zeroed": lambda p: p.write_bytes(bytes(p.stat().st_size)),
    "flipped_at_start": _flip(lambda n: 0),
    "flipped_in_middle": _flip(lambda n: n // 2),
    "flipped_at_end": _flip(lambda n: n - 4),
    "deleted": lambda p: p.unlink(),
    "replaced_by_directory": _to_directory,
}


def _numbers(tree, path=()):
  """Paths of the numbers (not booleans) in a parsed JSON document."""
  if isinstance(tree, dict):
    return [q for k, v in tree.items() for q in _numbers(v, path + (k,))]
  if isinstance(tree, list):
    return [q for i, v in enumerate(tree) for q in _numbers(v, path + (i,))]
  return [path] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def _json_edits(path: pathlib.Path) -> list[tuple[str, object]]:
  """(name, document) pairs: the first, middle and last number of a JSON file, plus one."""
  try:
    doc = json.loads(path.read_text())
  except ValueError:
    return []
  numbers = _numbers(doc)
  edits = []
  for name, where in (("first", 0), ("middle", len(numbers) // 2), ("last", -1)):
    if not numbers:
      break
    edited = json.loads(path.read_text())
    target = edited
    *parents, last = numbers[where]
    for key in parents:
      target = target[key]
    target[last] += 1
    edits.append((f"{name}_number_plus_one", edited))
  return edits


def _same(a, b) -> bool:
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  return len(la) == len(lb) and all(
      pa == pb and np.array_equal(np.asarray(x), np.asarray(y))
      for (pa, x), (pb, y) in zip(jax.device_get(la), jax.device_get(lb)))


def _outcome(step_dir: pathlib.Path, abstract, saved) -> str:
  """'fallback' (CorruptCheckpoint) or 'bitwise'; anything else fails the test."""
  try:
    state, data_state = checkpoint.restore_step(str(step_dir), STEPS, abstract, batch_size=BATCH)
  except checkpoint.CorruptCheckpoint:
    return "fallback"
  want_state, want_data = saved[STEPS]
  assert data_state == want_data, f"data position {data_state} != {want_data}"
  assert _same(state, want_state), "the state read back differs"
  return "bitwise"


def _orbax_noise(records) -> list[str]:
  """What Orbax logged beside our own warning: asyncio's reports of abandoned reads, its
  own warnings."""
  gc.collect()  # Abandoned reads report when collected.
  return [f"{r.name}: {r.getMessage()[:200]}" for r in records
          if r.name == "asyncio" or (r.levelno >= logging.WARNING and "unusable" not in
                                     r.getMessage())]


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.slow
def test_every_file_damaged(run, tmp_path, damage, caplog):
  workdir, abstract, saved = run
  clean = workdir / "checkpoints" / str(STEPS)
  outcomes = {}
  with caplog.at_level(logging.INFO):
    for name in _files(clean):
      step_dir = tmp_path / name.replace("/", "_") / str(STEPS)
      shutil.copytree(clean, step_dir)
      DAMAGE[damage](step_dir / name)
      outcomes[name] = _outcome(step_dir, abstract, saved)
    assert not _orbax_noise(caplog.records), _orbax_noise(caplog.records)
  # Files Orbax does not read (commit markers, array files the root manifest has merged)
  # may restore bitwise; the JSON items and the arrays it reads can only fall back.
  must_fail = ["data/metadata", "meta/metadata", "state/manifest.ocdbt"]
  assert all(outcomes[n] == "fallback" for n in must_fail), json.dumps(outcomes)
  assert any(outcomes[n] == "fallback" for n in outcomes if n.startswith("state/d/")), outcomes


def test_every_json_value_edited(run, tmp_path):
  workdir, abstract, saved = run
  clean = workdir / "checkpoints" / str(STEPS)
  outcomes = {}
  for name in _files(clean):
    for edit, document in _json_edits(clean / name):
      step_dir = tmp_path / f"{name.replace('/', '_')}_{edit}" / str(STEPS)
      shutil.copytree(clean, step_dir)
      (step_dir / name).write_text(json.dumps(document))
      outcomes[f"{name}:{edit}"] = _outcome(step_dir, abstract, saved)
  assert {n.split(":")[0] for n in outcomes} >= {"data/metadata", "meta/metadata",
                                                 "_CHECKPOINT_METADATA"}
  assert all(v == "fallback" for k, v in outcomes.items()
             if k.startswith(("data/metadata", "meta/metadata"))), outcomes


def test_another_model_is_reported_as_such(run):
  workdir, abstract, _ = run
  head = abstract.params["head"]["kernel"]
  other = abstract.replace(params=abstract.params | {"head": abstract.params["head"] | {
      "kernel": jax.ShapeDtypeStruct((head.shape[0], 3), head.dtype, sharding=head.sharding)}})
  with pytest.raises(ValueError, match=r"\.params\['head'\]\['kernel'\] is float32\(16, 10\) "
                     r"but the model needs float32\(16, 3\)"):
    checkpoint.restore_step(str(workdir / "checkpoints" / str(STEPS)), STEPS, other,
                            batch_size=BATCH)


def test_every_file_emptied_falls_back_with_one_warning(run, tmp_path, caplog):
  workdir, abstract, saved = run
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(workdir / "checkpoints", ckpts)
  for name in _files(ckpts / str(STEPS)):
    (ckpts / str(STEPS) / name).write_bytes(b"")
  ckpt = checkpoint.Checkpointer(str(ckpts), async_save=False, batch_size=BATCH)
  with caplog.at_level(logging.WARNING):
    step, state, data_state = ckpt.restore_latest(abstract)
  ckpt.close()
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "unusable" in r.getMessage()]
  assert len(warnings) == 1 and f"step {STEPS} is unusable" in warnings[0], warnings
  assert not _orbax_noise(caplog.records), _orbax_noise(caplog.records)
  assert step == 4 and (ckpts / "set_aside" / str(STEPS)).is_dir()
  assert data_state == saved[4][1] and _same(state, saved[4][0])


@pytest.mark.slow
def test_edited_data_position_resumes_bitwise_from_the_previous_step(run, data_dir, tmp_path,
                                                                     caplog):
  """The trainer end to end: a data position edited by hand (500 -> 501 in a real run)
  is caught, and the run redone from the step before ends bitwise where it did."""
  workdir, _, _ = run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  data = copy / "checkpoints" / str(STEPS) / "data" / "metadata"
  position = json.loads(data.read_text())
  data.write_text(json.dumps(position | {"next_index": position["next_index"] + 1}))
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(_config(data_dir), str(copy))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "unusable" in r.getMessage()]
  assert len(warnings) == 1 and "data-iterator state" in warnings[0], warnings
  assert not _orbax_noise(caplog.records), _orbax_noise(caplog.records)
  assert _same(restore_state(copy, STEPS), restore_state(workdir, STEPS))


@pytest.mark.slow
def test_readers_skip_a_damaged_step_with_one_warning(run, tmp_path, caplog):
  """`load_run` (sample, translate, transfer, analysis): the damaged newest step is skipped,
  left in place (the reader does not own the workdir), and the previous one is read; asked
  for by number, the damaged step is an error."""
  workdir, _, saved = run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  for path in (copy / "checkpoints" / str(STEPS) / "state").rglob("d/*"):
    DAMAGE["zeroed"](path)  # Every array file, so that the parameters are hit too.
  with caplog.at_level(logging.WARNING):
    loaded = runs.load_run(str(copy))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "unusable" in r.getMessage()]
  assert len(warnings) == 1 and f"step {STEPS} in" in warnings[0], warnings
  assert not _orbax_noise(caplog.records), _orbax_noise(caplog.records)
  assert loaded.step == 4 and (copy / "checkpoints" / str(STEPS)).is_dir()
  assert _same(loaded.variables["params"], saved[4][0].params)
  assert loaded.model.apply(loaded.variables, np.zeros((1, 8, 8, 1), np.float32)).shape == (1, 10)
  with pytest.raises(ValueError, match=rf"No usable checkpoint .*step {STEPS}.*(unreadable|digest)"):
    runs.load_run(str(copy), str(STEPS))


def test_readers_take_a_workdir_relative_to_the_current_folder(run, monkeypatch):
  """A workdir named relative to the current folder reads as the same run."""
  workdir, _, saved = run
  monkeypatch.chdir(os.path.dirname(workdir))
  loaded = runs.load_run(os.path.basename(workdir), build_model=False)
  assert loaded.step == STEPS and _same(loaded.variables["params"], saved[STEPS][0].params)
