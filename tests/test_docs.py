"""The documentation site builds with warnings as errors (notebooks not executed here:
tests/test_course_notebooks.py executes them)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
  env = dict(os.environ, CNNRNN_DOCS_EXECUTE="off")
  proc = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html",
       "-d", str(tmp_path / "doctrees"), "docs", str(tmp_path / "html")],
      cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  # The API reference lists the public names with their docstrings.
  with open(tmp_path / "html" / "api" / "nn.html", encoding="utf-8") as f:
    nn_page = f.read()
  for name in ("RNN", "LSTMCell", "GRUCell", "MultiHeadAttention", "Bidirectional"):
    assert f'id="cnnrnn.nn.{name}"' in nn_page, name
  with open(tmp_path / "html" / "api" / "decode.html", encoding="utf-8") as f:
    assert 'id="cnnrnn.decode.generate"' in f.read()


def test_every_public_name_is_on_an_api_page():
  """The directive's discovery finds the names the README and DESIGN promise."""
  sys.path.insert(0, os.path.join(ROOT, "docs"))
  try:
    import conf  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  assert {"create", "names"} <= set(conf.public_names("cnnrnn.models"))
  assert {"RNN", "SimpleRNNCell", "StackedRNN", "MultiHeadAttention"} <= set(
      conf.public_names("cnnrnn.nn"))
  assert {"greedy_search", "beam_search", "generate"} <= set(conf.public_names("cnnrnn.decode"))
  assert {"from_torch", "to_torch", "rnn_from_torch"} <= set(
      conf.public_names("cnnrnn.interop.torch", "cnnrnn.interop"))
  # What a module merely imports is not its public API.
  assert "Callable" not in conf.public_names("cnnrnn.decode")
