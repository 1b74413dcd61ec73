"""One run per workdir: a second run is refused at once naming the holder; the lock of a
killed process is free again."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from cnnrnn import train
from cnnrnn.train import workdir_lock
from configs import quickstart
from tests.helpers import REPO, cli

_HOLD = """
import sys, time
from cnnrnn.train.workdir_lock import WorkdirLock
with WorkdirLock(sys.argv[1]):
  print("held", flush=True)
  time.sleep(300)
"""


@pytest.fixture
def holder(tmp_path):
  """Another process holding tmp_path/run, as a concurrent run would."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(workdir)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == "held\n"
  yield workdir, proc
  proc.kill()
  proc.wait()


def test_second_run_is_refused_at_once_naming_the_holder(holder, data_dir, monkeypatch):
  workdir, proc = holder
  def no_compile(*args, **kwargs):
    raise AssertionError("jax.jit was called: the run should have been refused before")
  monkeypatch.setattr(jax, "jit", no_compile)
  c = quickstart.get_config()
  c.mesh = (("data", 1),)
  c.dataset.data_dir = data_dir
  start = time.perf_counter()
  with pytest.raises(workdir_lock.WorkdirLocked,
                     match=rf"in use by another run \(pid {proc.pid} on {socket.gethostname()}, "
                           r"started \d{4}-\d\d-\d\dT"):
    train.train_and_evaluate(c, str(workdir))
  assert time.perf_counter() - start < 10
  assert not (workdir / "config.json").exists()


@pytest.mark.slow
def test_command_line_says_it_in_one_line(holder, data_dir):
  workdir, proc = holder
  cmd, kw = cli("configs/quickstart.py", workdir, data_dir, 1)
  result = subprocess.run(cmd, **kw, timeout=300)
  assert result.returncode == 1
  err = result.stderr.decode()
  assert f"error: workdir {workdir} is in use by another run (pid {proc.pid}" in err
  assert "Traceback" not in err
  assert not (workdir / "checkpoints").exists()


def test_lock_of_a_killed_process_is_free(holder):
  workdir, proc = holder
  with pytest.raises(workdir_lock.WorkdirLocked):
    workdir_lock.WorkdirLock(str(workdir)).acquire()
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  with workdir_lock.WorkdirLock(str(workdir)):  # At once: the kernel released it.
    assert f'"pid": {os.getpid()}' in (workdir / workdir_lock.LOCK_FILE).read_text()
  # Two holders in one process conflict too (each open file has its own flock).
  with workdir_lock.WorkdirLock(str(workdir)):
    with pytest.raises(workdir_lock.WorkdirLocked):
      workdir_lock.WorkdirLock(str(workdir)).acquire()
