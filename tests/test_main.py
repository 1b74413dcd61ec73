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
    ("configs/quickstart.py", ["--config.dataset.name=mnistt"], "did you mean 'mnist'?"),
    ("configs/quickstart.py", ["--config.checkpoint.max_to_keep=0"],
     "error: checkpoint.max_to_keep=0; allowed: a finite number in [1, inf)"),
])
def test_one_line_errors(tmp_path, data_dir, config, flags, message):
  cmd, kw = cli(config, tmp_path / "run", data_dir, 1, *flags)
  result = subprocess.run(cmd, **kw, timeout=300)
  err = result.stderr.decode()
  assert result.returncode == 1, err[-2000:]
  assert message in err and "Traceback" not in err, err[-2000:]
  assert len([l for l in err.splitlines() if not l.startswith(("I", "W"))]) <= 3, err


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
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout
  assert out == ("the disk is full: checkpoint step 1 needs about 5 MiB (/ck)\n"
                 "the filesystem is read-only (/w)\n")
