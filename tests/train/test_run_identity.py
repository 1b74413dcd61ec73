"""A run's identity is its config: a resume that changes the computation is refused with
each changed field, old and new; free fields and explicitly allowed changes pass."""

import json
import shutil

import jax
import numpy as np
import pytest

from cnnrnn import train
from cnnrnn.train import run_identity
from configs import quickstart
from tests.helpers import override, restore_state


def _config(data_dir, **overrides):
  c = quickstart.get_config()
  c.mesh = (("data", 1),)
  c.dataset.data_dir = data_dir
  c.progress_bar = False
  c.num_train_steps = 4
  c.log_every_steps = 2
  c.checkpoint_every_steps = 4
  c.optimizer.schedule = "constant"
  c.checkpoint.async_save = False
  return override(c, **overrides)


@pytest.fixture
def no_compile(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("jax.jit was called: the change should have been refused before")
  monkeypatch.setattr(jax, "jit", refuse)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(_config(data_dir), str(workdir))
  return workdir


@pytest.mark.parametrize("field,value,shown", [
    ("batch_size", 32, "batch_size: 64 -> 32"),
    ("seed", 1, "seed: 0 -> 1"),
    ("model.features", (32, 32), "model.features: [32, 64] -> [32, 32]"),
    ("optimizer.learning_rate", 3e-3, "optimizer.learning_rate: 0.001 -> 0.003"),
    ("dataset.augment", "crop_flip", "dataset.augment: 'none' -> 'crop_flip'"),
    ("num_train_steps", 8, "num_train_steps: 4 -> 8"),
])
@pytest.mark.slow
def test_changed_computation_is_refused(saved_run, data_dir, no_compile, field, value, shown):
  with pytest.raises(run_identity.ConfigChanged) as e:
    train.train_and_evaluate(_config(data_dir, **{field: value}), str(saved_run))
  assert shown in str(e.value) and "--allow_change" in str(e.value)
  assert json.loads((saved_run / "config.json").read_text())["seed"] == 0  # Not overwritten.


def test_every_changed_field_is_listed(saved_run, data_dir, no_compile):
  with pytest.raises(run_identity.ConfigChanged) as e:
    train.train_and_evaluate(_config(data_dir, seed=3, **{"optimizer.name": "sgd"}), str(saved_run))
  assert "seed: 0 -> 3" in str(e.value) and "optimizer.name: 'adam' -> 'sgd'" in str(e.value)


@pytest.mark.parametrize("overrides,allow,problem", [
    ({"batch_size": 32}, ["batch_size"], "batch_size cannot change"),
    ({"num_train_steps": 2}, ["num_train_steps"], "num_train_steps=2 ends before"),
    ({"num_train_steps": 8, "optimizer.schedule": "cosine"}, ["num_train_steps", "optimizer"],
     "cannot change under optimizer.schedule='cosine'"),
])
def test_allowed_changes_that_cannot_be_honoured(saved_run, data_dir, no_compile, overrides,
                                                 allow, problem):
  with pytest.raises(run_identity.ConfigChanged, match=problem):
    train.train_and_evaluate(_config(data_dir, **overrides), str(saved_run), allow_changes=allow)


@pytest.mark.slow
def test_free_fields_change_freely(saved_run, tmp_path, data_dir):
  shutil.copytree(saved_run, tmp_path, dirs_exist_ok=True)
  free = {"log_every_steps": 1, "eval_batch_size": 64, "checkpoint.max_to_keep": 1,
          "progress_bar": False, "dataset.read_threads": 1}
  train.train_and_evaluate(_config(data_dir, **free), str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["eval_batch_size"] == 64


@pytest.mark.slow
def test_extending_a_run_equals_training_longer_at_once(saved_run, tmp_path, data_dir):
  train.train_and_evaluate(_config(data_dir, num_train_steps=8), str(tmp_path / "straight"))
  shutil.copytree(saved_run, tmp_path / "extended")
  train.train_and_evaluate(_config(data_dir, num_train_steps=8), str(tmp_path / "extended"),
                           allow_changes=["num_train_steps"])
  straight = restore_state(tmp_path / "straight", 8)
  extended = restore_state(tmp_path / "extended", 8)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(extended)):
    np.testing.assert_array_equal(a, b)
  changes = (tmp_path / "extended" / "config_changes.jsonl").read_text().splitlines()
  changes = [json.loads(line) for line in changes]
  assert changes[0]["from_step"] == 4 and changes[0]["changes"] == {"num_train_steps": [4, 8]}


def test_checkpoints_without_config_json_refuse_to_resume(tmp_path, data_dir):
  (tmp_path / "checkpoints" / "400").mkdir(parents=True)
  with pytest.raises(run_identity.ConfigChanged,
                     match=r"checkpoints \(newest: step 400\) but no config.json.*Put the run's "
                           r"config.json back"):
    run_identity.check(_config(data_dir, **{"optimizer.learning_rate": 0.5}), str(tmp_path))
  assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("name,match", [
    ("bogus_field", r"--allow_change=bogus_field: the config has no field or block 'bogus_field'; "
                    r"allowed: a field \(e.g. batch_size, .*num_train_steps.*\) or a block "
                    r"\(.*model, optimizer.*\)"),
    ("optimizer.learnng_rate", r"did you mean optimizer.learning_rate"),
])
def test_unknown_allowed_change_names_the_fields(tmp_path, data_dir, name, match):
  with pytest.raises(run_identity.ConfigChanged, match=match):
    run_identity.check(_config(data_dir), str(tmp_path), allow_changes=[name])
  run_identity.check(_config(data_dir), str(tmp_path),
                     allow_changes=["optimizer", "model.features", "num_train_steps"])
