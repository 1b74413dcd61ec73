"""The command line answers bad input with one line (no traceback) and exit code 1."""

import subprocess
import sys

import pytest

from tests.helpers import REPO, cli


@pytest.mark.parametrize("config,flags,message", [
    ("configs/nope.py", [], "error: --config=configs/nope.py: no such config file"),
    ("configs/quickstart.py", ["--config.unknown_field=3"],
     "error: --config.unknown_field: configs/quickstart.py has no field 'unknown_field'"),
    ("configs/quickstart.py", ["--config.optimizer.learing_rate=0.1"],
     "did you mean --config.optimizer.learning_rate"),
    ("configs/quickstart.py", ["--config.dataset.name=mnistt"], "did you mean 'mnist'"),
    ("configs/quickstart.py", ["--config.checkpoint.max_to_keep=0"],
     "error: checkpoint.max_to_keep=0; allowed: a finite number in [1, inf)"),
])
@pytest.mark.slow
def test_one_line_errors(tmp_path, data_dir, config, flags, message):
  cmd, kw = cli(config, tmp_path / "run", data_dir, 1, *flags)
  result = subprocess.run(cmd, **kw, timeout=300)
  err = result.stderr.decode()
  assert result.returncode == 1, err[-2000:]
  assert message in err and "Traceback" not in err, err[-2000:]
  assert len([l for l in err.splitlines() if not l.startswith(("I", "W"))]) <= 3, err


@pytest.mark.slow
def test_workdir_that_is_a_file(tmp_path, data_dir):
  (tmp_path / "file").write_text("")
  cmd, kw = cli("configs/quickstart.py", tmp_path / "file", data_dir, 1)
  result = subprocess.run(cmd, **kw, timeout=300)
  assert result.returncode == 1
  message = f"error: --workdir={tmp_path / 'file'} is a file, not a directory"
  assert message in result.stderr.decode()


def test_os_errors_behind_other_errors_are_named():
  code = """
import errno
from cnnrnn import main
full = OSError(errno.ENOSPC, "the disk is full: checkpoint step 1 needs about 5 MiB", "/ck")
wrapped = RuntimeError("a save failed")
wrapped.__cause__ = full
print(main._describe_os_error(main._os_error(wrapped)))
print(main._describe_os_error(OSError(errno.EROFS, "Read-only file system", "/w")))
offline = OSError("transfer.source='timm:vit_ti16': cannot download timm weights (Connection "
                  "refused). Offline, download URL elsewhere and set transfer.source to its path")
offline.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
wrapped = RuntimeError("init failed")
wrapped.__cause__ = offline
print(main._describe_os_error(main._os_error(wrapped)))
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout
  assert out == ("the disk is full: checkpoint step 1 needs about 5 MiB (/ck)\n"
                 "the filesystem is read-only (/w)\n"
                 "transfer.source='timm:vit_ti16': cannot download timm weights (Connection "
                 "refused). Offline, download URL elsewhere and set transfer.source to its path\n")


@pytest.mark.slow
def test_signals_through_start_up_exit_at_once_and_training_resumes(tmp_path, data_dir):
  """SIGINT/SIGTERM at random moments of start-up: each exits at once with 130/143 (or is
  killed by the signal's default action before Python's first instruction), never trains
  on, never crashes; one during training saves and exits 75, and the rerun resumes."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import random  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "run"
  cmd, kw = cli("configs/quickstart.py", workdir, data_dir, 1, "--config.num_train_steps=2000",
                "--config.log_every_steps=1", "--config.model.features=(4, 8)",
                "--config.model.dense=(16,)", "--config.checkpoint.every_secs=0",
                "--config.optimizer.schedule=constant")
  rng = random.Random(0)
  for _ in range(6):
    sig = rng.choice([signal.SIGINT, signal.SIGTERM])
    proc = subprocess.Popen(cmd, **kw)
    time.sleep(rng.uniform(0.05, 3.0))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode in (128 + sig, -sig, 75), (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    if proc.returncode == 128 + sig:
      assert f"{sig.name} received with no training step to save: exiting at once" in err
  proc = subprocess.Popen(cmd, **kw)  # Now signalled once training has logged a step.
  metrics, deadline = workdir / "metrics.jsonl", time.time() + 300
  while not (metrics.exists() and any(json.loads(l)["split"] == "train"
                                      for l in metrics.read_text().splitlines()
                                      if l.endswith("}"))):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err.decode()[-2000:]
  saved = max(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  rerun = subprocess.run([a.replace("num_train_steps=2000", f"num_train_steps={saved + 2}")
                          for a in cmd] + ["--allow_change=num_train_steps"], **kw, timeout=300)
  err = rerun.stderr.decode()
  assert rerun.returncode == 0 and f"Resumed from {workdir} at step {saved}" in err, err[-2000:]


@pytest.mark.slow
def test_programs_define_their_flags_only_when_run():
  """The command-line programs share flag names (--workdir, --out, ...): importing several of
  them in one process (a notebook, a test session) defines none, and each still runs."""
  code = """
import importlib, importlib.util
from absl import flags
names = ["cnnrnn.main", "cnnrnn.sample", "cnnrnn.report", "cnnrnn.translate",
         "cnnrnn.data.prepare", "cnnrnn.analysis.curves", "cnnrnn.analysis.attention_maps",
         "cnnrnn.analysis.hybrids"]
for name in names:
  importlib.import_module(name)
spec = importlib.util.spec_from_file_location("claims", "experiments/course_claims/run.py")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
ours = {"config", "workdir", "out", "part", "check", "prompt", "dataset", "experiments"}
print(sorted(ours & set(flags.FLAGS)))
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"
  # Run as programs, each has its own flags (absl's --helpshort lists them and exits 1).
  for program, flag in (("cnnrnn.main", "--config"), ("cnnrnn.sample", "--prompt"),
                        ("cnnrnn.report", "--check"), ("cnnrnn.data.prepare", "--manual_dir")):
    usage = subprocess.run([sys.executable, "-m", program, "--helpshort"], cwd=REPO,
                           capture_output=True, text=True, timeout=300, check=False)
    assert flag in usage.stdout, (program, usage.stdout[-2000:], usage.stderr[-2000:])
