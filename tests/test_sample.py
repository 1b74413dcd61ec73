"""`cnnrnn.sample` checks its flags before it loads anything: one line naming the flag."""

import subprocess
import sys

import pytest

from cnnrnn import sample
from tests.helpers import REPO


@pytest.mark.parametrize("flag,value,message", [
    ("length", -5, "--length=-5; allowed: an integer >= 1"),
    ("temperature", float("nan"), "--temperature=nan; allowed: a finite number >= 0"),
    ("num_samples", 0, "--num_samples=0; allowed: an integer >= 1"),
])
def test_bad_flags_are_named(flag, value, message):
  values = {"length": 5, "temperature": 0.8, "num_samples": 1} | {flag: value}
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    sample.check_flags(**values)


@pytest.mark.slow
def test_command_line_checks_flags_before_loading(tmp_path):
  result = subprocess.run([sys.executable, "-m", "cnnrnn.sample", f"--workdir={tmp_path}",
                           "--length=-5"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --length=-5; allowed: an integer >= 1 (tokens per sample)"), result.stderr
