"""The trainer end to end: real data, sharding, exact resume, and every early error."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from cnnrnn import train
from configs import lenet5_mnist, quickstart
from tests.helpers import cli, override, restore_state, shared_dataset


# In-process runs use one of the 8 fake devices: with jax 0.10.2, in-process 8-device
# steps under heavy CPU contention occasionally aborted in XLA's all-reduce rendezvous
# ("7 of 8 threads arrived"). Multi-device training is tested in subprocesses below.
ONE_DEVICE = (("data", 1),)


def _quick(data_dir, **overrides):
  c = quickstart.get_config()
  c.mesh = ONE_DEVICE
  c.dataset.data_dir = data_dir
  c.progress_bar = False
  c.num_train_steps = 6
  c.log_every_steps = 3
  c.checkpoint.async_save = False
  return override(c, **overrides)


@pytest.mark.parametrize("field,value,match", [
    ("model.name", "lenet7", r"model.name='lenet7': Unknown model name 'lenet7'; known models: .*lenet5"),
    ("accel", "gpu", r"accel='gpu'; allowed: auto, xla, cpu_native"),
    ("optimizer.name", "adagrad", r"optimizer.name='adagrad'; allowed: sgd, momentum, nesterov, adam, adamw"),
    ("optimizer.learning_rate", -1e-3, r"optimizer.learning_rate=-0.001; allowed: a finite number in \(0, inf\)"),
    ("batch_size", 60, r"batch_size=60 does not divide over the 8 devices"),
    ("eval_batch_size", 12, r"eval_batch_size=12 does not divide over the 8 devices"),
    ("dataset.name", "mnistt", r"dataset.name='mnistt' is neither a cnnrnn builder \(.*mnist"),
    ("task.name", "regression!", r"task.name='regression!'; known tasks"),
    ("mesh", (("batch", -1),), r"mesh axis 'batch' in config.mesh; allowed axis names"),
])
def test_bad_config_fails_before_compiling(data_dir, tmp_path, monkeypatch, field, value, match):
  assert len(jax.devices()) == 8
  def no_compile(*args, **kwargs):
    raise AssertionError("jax.jit was called before the config error was reported")
  monkeypatch.setattr(jax, "jit", no_compile)
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(_quick(data_dir, **{"mesh": (("data", -1),), field: value}), str(tmp_path))


@pytest.mark.slow
def test_outputs_and_resume_of_a_finished_run(data_dir, tmp_path):
  c = _quick(data_dir)
  first = train.train_and_evaluate(c, str(tmp_path))
  assert set(first) >= {"loss", "accuracy", "top5_accuracy"} and first["num_examples"] == 364
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["split"]) for r in records] == [(3, "train"), (6, "train"), (6, "test")]
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "conv_stack"
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6"]
  # The same command again: nothing left to train; the same test metrics.
  assert train.train_and_evaluate(c, str(tmp_path)) == first


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_the_model(data_dir, tmp_path):
  train.train_and_evaluate(_quick(data_dir, **{"model.features": (8, 16)}), str(tmp_path))
  changed = _quick(data_dir, **{"model.features": (8, 32)})
  with pytest.raises(ValueError, match=r"model.features: \[8, 16\] -> \[8, 32\]"):
    train.train_and_evaluate(changed, str(tmp_path))
  # Allowed to change, the model still cannot load the checkpoint: named, nothing set aside.
  with pytest.raises(ValueError, match=r"params.* is float32\(16,\) but the model needs float32\(32,\)"):
    train.train_and_evaluate(changed, str(tmp_path), allow_changes=["model"])
  assert not (tmp_path / "checkpoints" / "set_aside").exists()


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(data_dir, tmp_path):
  # A harmless first stretch that gets checkpointed, then the learning rate explodes.
  c = _quick(data_dir, **{"optimizer.name": "sgd", "optimizer.learning_rate": 1e-3,
                          "optimizer.schedule": "step", "optimizer.decay_boundaries": (4,),
                          "optimizer.decay_factor": 1e35, "num_train_steps": 12,
                          "checkpoint_every_steps": 1, "log_every_steps": 1})
  with pytest.raises(FloatingPointError, match=r"at step \d+; stopped. Last good checkpoint: step \d+"):
    train.train_and_evaluate(c, str(tmp_path))
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert kept and max(kept) >= 3


@pytest.mark.slow
def test_lenet5_on_real_mnist(data_dir, tmp_path):
  c = lenet5_mnist.get_config()
  c.dataset.data_dir = data_dir
  c.dataset.manual_dir = shared_dataset("mnist")
  c.num_epochs = 2
  c.progress_bar = False
  c.eval_every_steps = 0
  c.mesh = ONE_DEVICE
  metrics = train.train_and_evaluate(c, str(tmp_path))
  assert metrics["num_examples"] == 10_000
  assert metrics["accuracy"] >= 0.98


def _cli(workdir, data_dir, devices, *flags):
  return cli("configs/quickstart.py", workdir, data_dir, devices, *flags)


def _leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


@pytest.mark.slow
def test_eight_devices_match_one(data_dir, tmp_path):
  # Momentum SGD rather than the quickstart's Adam: Adam turns rounding-level differences
  # of near-zero gradients into +-lr steps, which no tolerance separates from a real bug.
  flags = ["--config.num_train_steps=20", "--config.model.batch_norm=True", "--config.model.dropout=0.2",
           "--config.checkpoint_every_steps=20", "--config.eval_every_steps=0",
           "--config.optimizer.name=momentum", "--config.optimizer.learning_rate=0.05"]
  for devices in (1, 8):
    cmd, kw = _cli(tmp_path / f"d{devices}", data_dir, devices, *flags)
    proc = subprocess.run(cmd, **kw)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
  one = restore_state(tmp_path / "d1", 20)
  eight = restore_state(tmp_path / "d8", 20)
  for (path, a), (_, b) in zip(_leaves(one["params"]), _leaves(eight["params"])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
  for (path, a), (_, b) in zip(_leaves(one["model_state"]), _leaves(eight["model_state"])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_killed_run_resumes_bitwise(data_dir, tmp_path):
  steps = 120
  flags = [f"--config.num_train_steps={steps}", "--config.checkpoint_every_steps=10",
           "--config.log_every_steps=10", "--config.eval_every_steps=0", "--config.model.dropout=0.1"]
  cmd, kw = _cli(tmp_path / "straight", data_dir, 2, *flags)
  assert subprocess.run(cmd, **kw).returncode == 0

  cmd, kw = _cli(tmp_path / "killed", data_dir, 2, *flags)
  proc = subprocess.Popen(cmd, **kw)
  ckpts = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while not (ckpts.exists() and any(s.isdigit() and int(s) >= 30 for s in os.listdir(ckpts))):
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())
  assert done and max(done) < steps, "killed too late to test resumption"
  proc = subprocess.run(cmd, **kw)
  assert proc.returncode == 0, proc.stderr.decode()[-3000:]

  straight = restore_state(tmp_path / "straight", steps)
  resumed = restore_state(tmp_path / "killed", steps)
  for (path, a), (_, b) in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  assert len(_leaves(straight)) == len(_leaves(resumed))
  lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1])["split"] == "test"


@pytest.mark.slow
def test_two_processes_share_the_work(data_dir, tmp_path):
  """Two cooperating processes (gloo collectives), each reading its own shard."""
  import portpicker  # pylint: disable=g-import-not-at-top

  port = portpicker.pick_unused_port()
  procs = []
  for i in range(2):
    cmd, kw = _cli(tmp_path, data_dir, 1, "--config.num_train_steps=30", "--config.eval_every_steps=0",
                   f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}")
    procs.append(subprocess.Popen(cmd, **kw))
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-3000:]
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  test = [r for r in records if r["split"] == "test"]
  assert len(test) == 1 and test[0]["num_examples"] == 364  # Written once, every example once.
  assert test[0]["accuracy"] > 0.5


@pytest.mark.slow
def test_adding_problem_is_learned_by_an_lstm(tmp_path):
  """A synthetic dataset and the regression task through the same trainer."""
  from configs import adding_problem  # pylint: disable=g-import-not-at-top

  c = adding_problem.get_config("lstm,10")
  c.model.hidden_size = 32
  c.dataset.num_train, c.dataset.num_test = 20_000, 2_000
  c.num_train_steps = 500
  c.optimizer.learning_rate = 3e-3
  c.eval_every_steps = 0
  c.progress_bar = False
  c.eval_batch_size = 400
  c.mesh = ONE_DEVICE
  metrics = train.train_and_evaluate(c, str(tmp_path))
  assert metrics["num_examples"] == 2_000
  assert metrics["mse"] < 0.03  # The mean-predicting baseline is 0.167.
