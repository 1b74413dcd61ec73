"""The metric writer: metrics.jsonl and TensorBoard event files, without loading PyTorch."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_metrics_jsonl_and_event_file_without_importing_torch(tmp_path):
  code = (
      "import sys\n"
      "from cnnrnn.train import writers\n"
      f"w = writers.MetricWriter({str(tmp_path)!r})\n"
      "w.write(3, 'train', {'loss': 0.5, 'note': 'x', 'nan': float('nan')})\n"
      "w.close()\n"
      "assert 'torch' not in sys.modules, 'tensorboardX loaded torch'\n"
      "import torch, tensorboardX.writer\n"  # Importing torch afterwards still works.
      "print(torch.__name__)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as f:
    record = json.loads(f.readline())
  assert record["step"] == 3 and record["split"] == "train" and record["loss"] == 0.5
  (event,) = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  assert os.path.getsize(event) > 0
