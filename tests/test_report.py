"""`python -m cnnrnn.report`: the committed tables are what the committed results give."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from cnnrnn import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy_repo(tmp_path):
  """The parts of the repository that the report reads, in a scratch folder."""
  for d in ("experiments", "configs", "docs"):
    if os.path.isdir(os.path.join(ROOT, d)):
      shutil.copytree(os.path.join(ROOT, d), tmp_path / d,
                      ignore=shutil.ignore_patterns("*.png", "_build", "__pycache__"))
  shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
  return str(tmp_path)


def test_committed_tables_match_results_files():
  proc = subprocess.run([sys.executable, "-m", "cnnrnn.report", "--check"], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr


def test_readme_holds_the_generated_reproductions_table():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  table = report.summary_table(report.load_experiments(ROOT))
  assert f"<!-- report:reproductions:begin -->\n{table}<!-- report:reproductions:end -->" in text
  # Every experiment with a results file has its row, with its number.
  for exp in report.load_experiments(ROOT):
    assert f"(experiments/{exp.name}/README.md)" in table


def test_an_edited_table_is_caught_and_named(tmp_path, capsys):
  root = _copy_repo(tmp_path)
  readme = os.path.join(root, "README.md")
  with open(readme, encoding="utf-8") as f:
    text = f.read()
  assert "| PTB word LSTM" in text and "test 114.6" in text
  with open(readme, "w", encoding="utf-8") as f:
    f.write(text.replace("test 114.6", "test 104.6", 1))
  assert report.run(root, check=True) == 1
  assert "README.md: table 'reproductions' differs" in capsys.readouterr().err
  # --write restores it, and --check then passes.
  assert report.run(root, write=True) == 0
  assert report.run(root, check=True) == 0
  with open(readme, encoding="utf-8") as f:
    assert f.read() == text


def test_an_edited_results_file_is_caught(tmp_path, capsys):
  root = _copy_repo(tmp_path)
  path = os.path.join(root, "experiments", "lenet5_mnist", "results.json")
  with open(path, encoding="utf-8") as f:
    results = json.load(f)
  results["rows"][0]["ours"] = 0.5
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f)
  assert report.run(root, check=True) == 1
  assert "table 'reproductions'" in capsys.readouterr().err


def test_experiment_table_formats_paper_and_ours():
  exp = report.Experiment("x", {
      "title": "t", "source": "s", "hardware": "h", "wall_time": "w", "paper": "p",
      "rows": [{"id": "a", "setting": "A", "config": "configs/quickstart.py", "metric": "err",
                "unit": "%", "fmt": ".2f", "paper": 0.95, "ours": 0.7421, "note": "",
                "comparable": False},
               {"id": "b", "setting": "B", "config": "configs/quickstart.py", "metric": "ppl",
                "paper": 82.7, "ours": None, "note": "not run"}],
      "summary": {"rows": ["a"]}})
  table = report.experiment_table(exp)
  assert "| A | `configs/quickstart.py` | err | 0.95% | 0.74% | not comparable |" in table
  assert "| B | `configs/quickstart.py` | ppl | 82.7 | — | not run |" in table


@pytest.mark.parametrize("args, message", [
    (["--check", "--write"], "--check and --write exclude each other"),
    (["--experiments=nope"], "--experiments: no results file for nope; available:"),
    (["--run=lenet5_mnist=/nonexistent"], "--run needs --out"),
    (["--run=bad", "--out=/tmp/x"], "expected EXPERIMENT=DIR"),
])
def test_bad_flags_fail_in_one_line(args, message):
  proc = subprocess.run([sys.executable, "-m", "cnnrnn.report", *args], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def test_workdir_curves_and_final_metrics(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  records = [{"step": s, "split": "train", "loss": 2.0 / s, "accuracy": 0.5 + s / 100}
             for s in (1, 10, 20)]
  records.append({"step": 20, "split": "test", "loss": 0.1, "accuracy": 0.97})
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  out = tmp_path / "out"
  assert report.run(ROOT, names=["lenet5_mnist"], out=str(out),
                    workdirs=[f"lenet5_mnist={workdir}"]) == 0
  text = (out / "lenet5_mnist.md").read_text()
  assert "| test | 20 | 0.97 | 0.1 |" in text
  assert (out / "lenet5_mnist_curves.png").stat().st_size > 1000
