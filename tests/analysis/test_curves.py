import json

import pytest

from cnnrnn.analysis import curves


def test_plot_curves_writes_a_png(tmp_path):
  records = [{"step": s, "split": "train", "loss": 1.0 / s, "accuracy": 1 - 1.0 / s} for s in (1, 2, 3)]
  records += [{"step": 3, "split": "eval", "loss": 0.4, "accuracy": 0.7},
              {"step": 3, "split": "test", "loss": 0.5, "accuracy": 0.6}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  out = curves.plot_curves(str(tmp_path), references={"accuracy": (0.9, "paper 0.9")})
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert len(curves.read_metrics(str(tmp_path))) == 5
  assert curves._parse_references(["accuracy=0.9125:He et al.", "loss=0.3"]) == {
      "accuracy": (0.9125, "He et al."), "loss": (0.3, "loss 0.3")}
  with pytest.raises(ValueError, match="expected metric=value"):
    curves._parse_references(["accuracy:0.9"])
  with pytest.raises(ValueError, match="none of the requested metrics"):
    curves.plot_curves(str(tmp_path), metrics=("bleu",))
  out = curves.plot_runs({"a": str(tmp_path), "b": str(tmp_path)}, str(tmp_path / "runs.png"),
                         metric="accuracy", baseline=0.5)
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="no 'eval' records of 'bleu'"):
    curves.plot_runs({"a": str(tmp_path)}, str(tmp_path / "x.png"), metric="bleu")


def test_read_metrics_keeps_the_last_record_of_each_step_and_split(tmp_path):
  """A run stopped at step 3 (checkpoint at 2) and resumed logs step 3 again."""
  lines = [{"step": 2, "split": "train", "loss": 2.0}, {"step": 3, "split": "train", "loss": 9.0},
           {"step": 3, "split": "train", "loss": 1.5}, {"step": 3, "split": "eval", "loss": 1.7},
           {"step": 4, "split": "train", "loss": 1.0}]
  (tmp_path / "metrics.jsonl").write_text(
      "\n".join(json.dumps(r) for r in lines) + '\n{"step": 5, "spl')  # Cut short by a kill.
  assert curves.read_metrics(str(tmp_path)) == [lines[0]] + lines[2:]
