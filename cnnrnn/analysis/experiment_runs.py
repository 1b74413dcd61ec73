"""What the reproduction scripts under `experiments/` share: run a config through the
command line, read its final metrics, and name the machine it ran on."""

import json
import os
import platform
import subprocess
import sys
import time

from cnnrnn.analysis import curves


def cpu_description() -> str:
  """The CPU's model name and widest vector ISA (Linux), else the platform's machine type."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = f.read()
  except OSError:
    return platform.machine()
  names = [l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")]
  flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines()
                    if l.startswith("flags")), []))
  isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
  return f"{names[0] if names else platform.machine()} ({isa})"


def final_metrics(workdir: str, split: str = "test") -> dict:
  """The last record of `split` in `workdir`'s metrics.jsonl (`curves.read_metrics`).

  Raises:
    ValueError: the run logged nothing for `split`.
  """
  records = [r for r in curves.read_metrics(workdir) if r.get("split") == split]
  if not records:
    raise ValueError(f"{workdir}/metrics.jsonl has no {split!r} record: did the run finish?")
  return records[-1]


def train(config: str, workdir: str, *flags: str, cwd: str | None = None) -> tuple[dict, float]:
  """Trains `--config=config` into `workdir` with `python -m cnnrnn.main` (quietly).

  Args:
    config: the config file and argument, e.g. "configs/mackey_glass.py:lstm,84".
    workdir: the run's workdir (an existing one resumes).
    *flags: more command-line flags, e.g. "--config.num_train_steps=100".
    cwd: the folder the command runs in (the repository root, for relative config paths).

  Returns:
    The final test metrics and the wall time in seconds.
  """
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "cnnrnn.main", f"--config={config}",
                  f"--workdir={workdir}", "--config.progress_bar=False", *flags],
                 cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return final_metrics(workdir), time.perf_counter() - start


def write_results(folder: str, results: dict) -> str:
  """Writes an experiment's `results.json` (what `cnnrnn.report` reads) into `folder`."""
  path = os.path.join(folder, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
    f.write("\n")
  return path
