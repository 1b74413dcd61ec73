"""The experiments' shared helpers: final metrics from the one metrics reader, the machine."""

import json
import os

import pytest

from cnnrnn.analysis import experiment_runs


def test_final_metrics_is_the_last_test_record(tmp_path):
  records = [{"step": 5, "split": "train", "loss": 1.0},
             {"step": 10, "split": "test", "loss": 0.5, "accuracy": 0.8},
             # A resumed run logs the final evaluation again: the later record counts.
             {"step": 10, "split": "test", "loss": 0.4, "accuracy": 0.9}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert experiment_runs.final_metrics(str(tmp_path))["accuracy"] == 0.9
  assert experiment_runs.final_metrics(str(tmp_path), "train")["loss"] == 1.0
  with pytest.raises(ValueError, match=r"no 'validation' record"):
    experiment_runs.final_metrics(str(tmp_path), "validation")


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads Linux's /proc/cpuinfo")
def test_cpu_description_names_the_vector_isa():
  flags = set(next(l for l in open("/proc/cpuinfo", encoding="utf-8").read().splitlines()
                   if l.startswith("flags")).split(":", 1)[1].split())
  isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
  assert experiment_runs.cpu_description().endswith(f" ({isa})")


def test_write_results_is_what_the_report_reads(tmp_path):
  results = {"title": "t", "rows": [{"id": "a", "ours": 0.5}]}
  path = experiment_runs.write_results(str(tmp_path), results)
  assert path == str(tmp_path / "results.json")
  text = (tmp_path / "results.json").read_text()
  assert json.loads(text) == results and text.endswith("\n")
