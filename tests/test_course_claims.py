"""experiments/course_claims/run.py: the quick run measures every claim and writes what the
README's tables are made from; the committed README is in step with the committed results."""

import functools
import importlib.util
import json
import math
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "experiments" / "course_claims"
RUN = FOLDER / "run.py"


@functools.cache
def _run_module():
  """run.py as a module (importing it runs nothing and defines no flags)."""
  spec = importlib.util.spec_from_file_location("course_claims_run", RUN)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # Importing it runs nothing.
  return module


def _env():
  """This environment without the test suite's fake CPU devices (one device, as users run)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  return env


@pytest.mark.slow
def test_quick_run_measures_every_claim(tmp_path):
  proc = subprocess.run([sys.executable, str(RUN), "--quick", f"--out={tmp_path}"], env=_env(),
                        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  parts = results["parts"]
  assert set(parts) == {"speed", "memory", "longrange", "latency"}
  for part in parts:
    assert (tmp_path / f"{part}.png").stat().st_size > 1000
    assert parts[part]["quick"] is True

  speed = parts["speed"]
  assert speed["lstm_params"] == pytest.approx(speed["transformer_params"], rel=0.1)
  assert [r["T"] for r in speed["rows"]] == [8, 16, 32]
  for r in speed["rows"]:
    assert r["lstm_tokens_per_s"] > 0 and r["transformer_tokens_per_s"] > 0
    assert r["batch"] * r["T"] == 64  # A fixed number of tokens per batch.
    assert r["ratio"] == pytest.approx(r["transformer_tokens_per_s"] / r["lstm_tokens_per_s"],
                                       rel=1e-2)

  memory = parts["memory"]["rows"]
  first, last = memory[0], memory[-1]
  growth = last["T"] / first["T"]
  # The Transformer's scratch grows faster than T (its [B, H, T, T] attention weights), and
  # faster than the LSTM's, which only stores one state per step.
  assert last["transformer_temp"] / first["transformer_temp"] > growth
  assert (last["transformer_temp"] / first["transformer_temp"]
          > last["lstm_temp"] / first["lstm_temp"])
  assert last["transformer_slope"] > 1 and last["lstm_slope"] > 0
  assert parts["memory"]["transformer_fit"]["c"] > 0
  for r in memory:
    for name in ("lstm", "transformer"):
      assert r[f"{name}_peak"] >= r[f"{name}_temp"] > 0

  for r in parts["longrange"]["rows"]:
    for name in ("lstm", "transformer"):
      assert math.isfinite(r[f"{name}_test_mse"]) and r[f"{name}_test_mse"] >= 0
      assert r[f"{name}_params"] > 0
      assert [s for s, _ in r[f"{name}_curve"]] == [2, 4]

  latency = {r["model"].split(" ")[0]: r for r in parts["latency"]["rows"]}
  assert latency["LeNet-5"]["params"] == 61_706  # DESIGN.md's count of the classic layout.
  assert latency["ResNet-20"]["params"] == 269_722  # He et al.'s 0.27M.
  for r in latency.values():
    assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert r["mflops"] > 0 and 0 < r["accuracy"] <= 100
  assert latency["ResNet-20"]["mflops"] > latency["LeNet-5"]["mflops"]

  ids = {r["id"] for r in results["rows"]}
  assert set(results["summary"]["rows"]) <= ids
  assert {"speed_best", "memory_transformer", "latency_resnet20"} <= ids


def test_committed_readme_tables_come_from_committed_results():
  run = _run_module()
  results = json.loads((FOLDER / "results.json").read_text())
  assert set(results["parts"]) == {"speed", "memory", "longrange", "latency"}
  assert not any(p["quick"] for p in results["parts"].values())
  readme = (FOLDER / "README.md").read_text()
  for name, table in run.tables(results).items():
    assert (f"<!-- course_claims:{name}:begin -->\n{table}<!-- course_claims:{name}:end -->"
            in readme), f"README table {name!r}: regenerate with run.py --readme"
  for name in run.PARTS:
    assert (FOLDER / f"{name}.png").is_file()


def test_report_rows_follow_the_parts():
  run = _run_module()
  parts = {"memory": {"batch": 2, "rows": [
      dict(T=8, lstm_temp=10, lstm_peak=20, transformer_temp=10, transformer_peak=20),
      dict(T=16, lstm_temp=20, lstm_peak=30, transformer_temp=40, transformer_peak=50,
           lstm_slope=1.0, transformer_slope=2.0)]}}
  rows = {r["id"]: r for r in run.report_rows(parts)}
  assert set(rows) == {"memory_lstm", "memory_transformer"}
  assert rows["memory_transformer"]["ours"] == 2.0
  assert rows["memory_transformer"]["paper"] == "O(n^2)"
