"""SIGTERM/SIGINT: save the current step on every process, exit with the preemption code,
and resume bitwise; a second signal aborts at once."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cnnrnn.train import preemption
from tests.helpers import REPO, cli, restore_state

STEPS = 100
FLAGS = [f"--config.num_train_steps={STEPS}", "--config.log_every_steps=5",
         "--config.checkpoint_every_steps=1000", "--config.eval_every_steps=0",
         "--config.checkpoint.every_secs=0", "--config.model.dropout=0.1"]


def _latest_logged_step(workdir) -> int:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return 0
  lines = [json.loads(l) for l in path.read_text().splitlines() if l.endswith("}")]
  return max((r["step"] for r in lines if r["split"] == "train"), default=0)


def _start(workdir, data_dir, num_processes: int, port: int | None = None):
  procs = []
  for i in range(num_processes):
    extra = ([f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
              f"--process_id={i}"] if num_processes > 1 else [])
    cmd, kw = cli("configs/quickstart.py", workdir, data_dir, 1, *FLAGS, *extra)
    procs.append(subprocess.Popen(cmd, **kw))
  return procs


def _finish(procs) -> list[tuple[int, str]]:
  out = []
  for p in procs:
    _, err = p.communicate(timeout=300)
    out.append((p.returncode, err.decode()))
  return out


def _signal_at_random_step(procs, workdir, target):
  step = random.randint(10, 60)
  deadline = time.time() + 300
  while _latest_logged_step(workdir) < step:
    assert all(p.poll() is None for p in procs), "the run ended before it could be signalled"
    assert time.time() < deadline
    time.sleep(0.02)
  target.send_signal(signal.SIGTERM)
  return step


def _assert_bitwise(a_dir, b_dir):
  a, b = restore_state(a_dir, STEPS), restore_state(b_dir, STEPS)
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves_with_path(b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
@pytest.mark.parametrize("num_processes", [1, 2])
def test_sigterm_saves_the_same_step_everywhere_and_resumes_bitwise(data_dir, tmp_path,
                                                                    num_processes):
  import portpicker  # pylint: disable=g-import-not-at-top

  port = lambda: portpicker.pick_unused_port() if num_processes > 1 else None
  for rc, err in _finish(_start(tmp_path / "straight", data_dir, num_processes, port())):
    assert rc == 0, err[-3000:]

  workdir = tmp_path / "preempted"
  procs = _start(workdir, data_dir, num_processes, port())
  # The last process gets the signal: the others learn of it through JAX's service.
  signalled_at = _signal_at_random_step(procs, workdir, procs[-1])
  results = _finish(procs)
  saved = []
  for rc, err in results:
    assert rc == preemption.PREEMPTED_EXIT_CODE, (signalled_at, err[-3000:])
    saved.append(int(re.search(r"Stopped on SIGTERM: saved step (\d+)", err).group(1)))
  assert len(set(saved)) == 1 and signalled_at <= saved[0] < STEPS, (signalled_at, saved)
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == saved[:1]

  for rc, err in _finish(_start(workdir, data_dir, num_processes, port())):
    assert rc == 0, err[-3000:]
  _assert_bitwise(tmp_path / "straight", workdir)


_WATCH = """
import os, signal, sys, time
from cnnrnn.train import preemption
with preemption.PreemptionWatcher() as watcher:
  watcher.arm()  # As after the first training step.
  os.kill(os.getpid(), signal.SIG{first})
  time.sleep(0.2)  # The Python handler runs between bytecodes.
  assert watcher.reached(1) and watcher.signal_name == "SIG{first}"
  print("saving", flush=True)
  os.kill(os.getpid(), signal.SIG{second})  # E.g. during a slow save: ends the process now.
  time.sleep(5)
  print("survived", flush=True)
"""


@pytest.mark.parametrize("first,second", [("TERM", "TERM"), ("INT", "TERM"), ("TERM", "INT")])
@pytest.mark.slow
def test_second_signal_aborts_at_once(first, second):
  proc = subprocess.run([sys.executable, "-c", _WATCH.format(first=first, second=second)],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.stdout == "saving\n", proc.stderr[-2000:]
  assert proc.returncode == -getattr(signal, f"SIG{second}")
  assert f"SIG{first} received: finishing this step" in proc.stderr


def test_a_signal_after_training_says_the_final_evaluation_finishes(capfd):
  with preemption.PreemptionWatcher() as watcher:
    assert not watcher.reached(1)  # Arms it.
    watcher.training_finished()
    signal.raise_signal(signal.SIGTERM)
    assert watcher.reached(2) and watcher.signal_name == "SIGTERM"
  err = capfd.readouterr().err
  assert "SIGTERM received: training is done" in err and "saving a checkpoint" not in err
