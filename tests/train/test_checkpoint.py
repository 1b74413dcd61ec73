"""Checkpoints that are verified and fall back: each corruption of the newest checkpoint is
set aside with one warning, and the run resumes from the previous one to bitwise the state
of an uninterrupted run."""

import errno
import json
import logging
import os
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

from cnnrnn import train
from cnnrnn.train import checkpoint
from configs import quickstart
from tests.helpers import override, restore_state

STEPS = 12


def _config(data_dir, **overrides):
  c = quickstart.get_config()
  c.mesh = (("data", 1),)
  c.dataset.data_dir = data_dir
  c.progress_bar = False
  c.num_train_steps = STEPS
  c.log_every_steps = 4
  c.checkpoint_every_steps = 4
  c.eval_every_steps = 0
  c.model.dropout = 0.1  # Randomness that must resume exactly too.
  c.model.features = (8, 16)  # Small: this file trains ten times.
  c.model.dense = (32,)
  c.checkpoint.async_save = False
  return override(c, **overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
  """A run to STEPS with checkpoints 4, 8, 12; returns (workdir, its final state)."""
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(_config(data_dir), str(workdir))
  return workdir, restore_state(workdir, STEPS)


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in (step_dir / "state").rglob("d/*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)


def _flip_bytes(step_dir):
  path = _largest_array_file(step_dir)
  raw = bytearray(path.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
  path.write_bytes(bytes(raw))


def _empty(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


def _alter_digest(step_dir):
  """Data that reads back fine but differs from what was saved, whatever the compression."""
  path = step_dir / "meta" / "metadata"
  meta = json.loads(path.read_text())
  key = next(k for k in meta["digest"] if k.startswith(".params"))
  meta["digest"][key] = (meta["digest"][key] + 1) % 2**32
  del meta["meta_digest"]  # Signed again: only the array digest disagrees.
  path.write_text(json.dumps(meta | {"meta_digest": checkpoint.json_digest(meta)}))


CORRUPTIONS = {
    "truncated_array_file": (_truncate, r"unreadable|digest mismatch"),
    "deleted_manifest": (lambda d: (d / "state" / "manifest.ocdbt").unlink(),
                         r"lacks state/manifest.ocdbt"),
    "deleted_metadata": (lambda d: (d / "state" / "_METADATA").unlink(), r"lacks state/_METADATA"),
    "empty_step_dir": (_empty, r"lacks _CHECKPOINT_METADATA, state/_METADATA"),
    "flipped_bytes": (_flip_bytes, r"unreadable|digest mismatch"),
    "digest_mismatch": (_alter_digest, r"\.params\[.*digest mismatch"),
}


def _assert_same_state(a, b):
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves_with_path(b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back(finished_run, data_dir, tmp_path, caplog, corruption):
  straight, final = finished_run
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))  # As if killed after step 8's save.
  corrupt, problem = CORRUPTIONS[corruption]
  corrupt(workdir / "checkpoints" / "8")
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(_config(data_dir), str(workdir))
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
              and "unusable" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert "Checkpoint step 8 is unusable" in warnings[0]
  assert re.search(problem, warnings[0]), warnings[0]
  assert (workdir / "checkpoints" / "set_aside" / "8").is_dir()  # Kept, never deleted.
  _assert_same_state(restore_state(workdir, STEPS), final)


@pytest.mark.slow
def test_no_usable_checkpoint_refuses_unless_starting_over(finished_run, data_dir, tmp_path):
  straight, final = finished_run
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  for step in (4, 8, STEPS):
    (workdir / "checkpoints" / str(step) / "state" / "_METADATA").unlink()
  set_aside = workdir / "checkpoints" / "set_aside"
  for attempt in (1, 2):  # Set aside the first time; still refused the second time.
    with pytest.raises(checkpoint.NoUsableCheckpoint, match=r"--start_over"):
      train.train_and_evaluate(_config(data_dir), str(workdir))
    assert sorted(os.listdir(set_aside)) == ["12", "4", "8", checkpoint.REFUSAL_FILE]
    refusals = (set_aside / checkpoint.REFUSAL_FILE).read_text().splitlines()
    assert len(refusals) == attempt and json.loads(refusals[-1])["set_aside"] == ["12", "4", "8"]
  train.train_and_evaluate(_config(data_dir), str(workdir), start_over=True)
  assert not (set_aside / checkpoint.REFUSAL_FILE).exists()
  _assert_same_state(restore_state(workdir, STEPS), final)  # Trained again from step 0.


def test_non_finite_state_is_never_saved(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), keep_best=True, async_save=False)
  state = {"w": jax.numpy.ones(3)}
  ckpt.save_best(1, state, {"next_index": 1}, {"accuracy": float("nan")})
  ckpt.wait()
  assert not (tmp_path / "ck" / "best").exists() or not os.listdir(tmp_path / "ck" / "best")
  with pytest.raises(FloatingPointError, match=r"not finite; not saved"):
    ckpt.save(2, {"w": jax.numpy.array([1.0, np.nan])}, {"next_index": 2})
  ckpt.save_best(3, {"w": jax.numpy.array([1.0, np.inf])}, {"next_index": 3}, {"accuracy": 0.9})
  ckpt.save_best(3, state, {"next_index": 3}, {"accuracy": 0.5})
  ckpt.wait()
  assert os.listdir(tmp_path / "ck" / "best") == ["3"]
  ckpt.close()


def test_full_disk_is_reported_before_writing(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), async_save=False)
  state = {"w": jax.numpy.ones((1000, 1000))}  # 4 MB.
  monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                      lambda path: shutil._ntuple_diskusage(10 * 2**20, 9 * 2**20, 2**20))
  with pytest.raises(OSError, match=r"the disk is full: checkpoint step 1 needs about 5.2 MiB, "
                     r"1.0 MiB are free") as e:
    ckpt.save(1, state, {"next_index": 1})
  assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "ck")
  assert not [d for d in os.listdir(tmp_path / "ck") if d != "set_aside"]  # Nothing written.
  ckpt.close()


@pytest.mark.slow
def test_time_based_checkpoints(data_dir, tmp_path):
  c = _config(data_dir, num_train_steps=6, checkpoint_every_steps=0, log_every_steps=3,
              **{"checkpoint.every_secs": 1e-9})
  train.train_and_evaluate(c, str(tmp_path))
  # Due after every step; max_to_keep=3 keeps the newest three.
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [4, 5, 6]
