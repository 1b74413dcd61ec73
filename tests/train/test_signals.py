"""SIGINT/SIGTERM at 20 random moments of start-up, training, evaluation and saving.

Each signalled run must end in one of the documented ways: 130 / 143 with one line and no
step trained (start-up, before the first step is done), 75 after saving exactly the last
step it trained (no step lost), 0 when it had already finished, or killed by the signal
itself before Python's first instruction. Nothing else: no traceback, no "Exception
ignored", no crash. The moments are chained on a workdir (each rerun resumes what the
previous signal left and is itself signalled), two chains at a time, and each chain,
finished by a plain rerun, must end bitwise on one uninterrupted reference run.
"""

import concurrent.futures
import json
import random
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from tests.helpers import cli, restore_state

STEPS = 200
EVAL_EVERY = 10  # Evaluation at steps 10, 20, ...: a signal right after its train line.
SAVE_EVERY = 5  # Checkpoints at 5, 10, ...: steps 5, 15, ... save without evaluating.
FLAGS = [f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
         f"--config.eval_every_steps={EVAL_EVERY}", f"--config.checkpoint_every_steps={SAVE_EVERY}",
         "--config.checkpoint.every_secs=0", "--config.model.features=(4,)",
         "--config.model.dense=()", "--config.optimizer.schedule=constant",
         "--config.batch_size=32", "--config.eval_batch_size=128"]
MOMENTS = ("start-up", "training", "evaluation", "saving")
NUM_MOMENTS = 20


def _train_steps(workdir) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  lines = [json.loads(l) for l in path.read_text().splitlines() if l.endswith("}")]
  return [r["step"] for r in lines if r["split"] == "train"]


def _wait_for_step(proc, workdir, logged_before: int, wanted) -> None:
  """Returns once the run logs a new train step for which `wanted(step)`, or it ends."""
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if any(wanted(s) for s in _train_steps(workdir)[logged_before:]):
      return
    time.sleep(0.005)


def _signal_once(cmd, kw, workdir, moment: str, rng: random.Random, log) -> dict:
  """Starts the run, signals it at `moment`, and checks how it ended."""
  logged_before = len(_train_steps(workdir))
  sig = rng.choice([signal.SIGINT, signal.SIGTERM])
  with open(log, "w+b") as err_file:
    proc = subprocess.Popen(cmd, **(kw | {"stderr": err_file}))
    if moment == "start-up":
      time.sleep(rng.uniform(0.0, 6.0))
    else:
      residue = {"training": None, "evaluation": 0, "saving": SAVE_EVERY}[moment]
      _wait_for_step(proc, workdir, logged_before,
                     lambda s: residue is None or s % EVAL_EVERY == residue)
      if moment == "training":
        time.sleep(rng.uniform(0.0, 0.05))
    if proc.poll() is None:
      proc.send_signal(sig)
    rc = proc.wait(timeout=300)
    err_file.seek(0)
    err = err_file.read().decode(errors="replace")
  new_steps = _train_steps(workdir)[logged_before:]
  outcome = {"moment": moment, "signal": sig.name, "rc": rc, "new_steps": new_steps[-3:]}
  problems = [p for p in ("Traceback", "Exception ignored", "Fatal Python error",
                          "Segmentation fault") if p in err]
  problems += [l for l in err.splitlines() if re.match(r"[EF]\d{4} ", l)]  # absl ERROR/FATAL.
  if rc == 128 + sig:
    if f"{sig.name} received with no training step to save: exiting at once" not in err:
      problems.append("no one-line message")
    if new_steps:
      problems.append(f"trained steps {new_steps} and saved none")
  elif rc == 75:
    saved = re.search(rf"Stopped on {sig.name}: saved step (\d+)", err)
    if saved is None:
      problems.append("no 'Stopped on ...: saved step' line")
    elif new_steps and int(saved.group(1)) != max(new_steps):
      problems.append(f"saved step {saved.group(1)} but trained up to {max(new_steps)}")
    elif not (workdir / "checkpoints" / saved.group(1)).is_dir():
      problems.append(f"step {saved.group(1)} is not in checkpoints/")
    if saved is not None:
      outcome["saved"] = int(saved.group(1))
  elif rc not in (0, -sig):
    problems.append(f"exit code {rc}")
  if problems:
    outcome["problems"] = problems
    outcome["stderr"] = err[-3000:]
  return outcome


def _chain(data_dir, workdir, moments, seed: int, logs) -> list[dict]:
  cmd, kw = cli("configs/quickstart.py", workdir, data_dir, 1, *FLAGS)
  rng = random.Random(seed)
  outcomes = [_signal_once(cmd, kw, workdir, m, rng, logs / f"{seed}_{i}.err")
              for i, m in enumerate(moments)]
  final = subprocess.run(cmd, **kw, timeout=600)  # The plain rerun that finishes the run.
  outcomes.append({"moment": "final rerun", "rc": final.returncode,
                   **({"stderr": final.stderr.decode()[-3000:], "problems": ["failed"]}
                      if final.returncode else {})})
  return outcomes


@pytest.mark.slow
def test_signals_at_random_moments_lose_nothing_and_resume_bitwise(data_dir, tmp_path):
  reference = tmp_path / "reference"
  cmd, kw = cli("configs/quickstart.py", reference, data_dir, 1, *FLAGS)
  result = subprocess.run(cmd, **kw, timeout=600)  # Also prepares the dataset, once.
  assert result.returncode == 0, result.stderr.decode()[-3000:]

  moments = [MOMENTS[i % len(MOMENTS)] for i in range(NUM_MOMENTS)]
  random.Random(0).shuffle(moments)
  half = NUM_MOMENTS // 2
  logs = tmp_path / "logs"
  logs.mkdir()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    chains = [pool.submit(_chain, data_dir, tmp_path / f"chain{i}", part, i, logs)
              for i, part in enumerate((moments[:half], moments[half:]))]
    outcomes = [c.result() for c in chains]

  bad = [o for chain in outcomes for o in chain if "problems" in o]
  assert not bad, json.dumps(bad, indent=1)
  flat = [o for chain in outcomes for o in chain if o["moment"] != "final rerun"]
  assert len(flat) == NUM_MOMENTS
  summary = json.dumps([{k: v for k, v in o.items() if k != "stderr"} for o in flat])
  # The moments hit both sides of the first step: exits at once, and saves after training.
  assert sum(o["rc"] in (130, 143) for o in flat) >= 2, summary
  assert sum(o["rc"] == 75 for o in flat) >= 6, summary
  want = jax.tree_util.tree_leaves_with_path(restore_state(reference, STEPS))
  for i in range(2):
    got = jax.tree_util.tree_leaves_with_path(restore_state(tmp_path / f"chain{i}", STEPS))
    assert len(got) == len(want)
    for (path, a), (_, b) in zip(want, got):
      np.testing.assert_array_equal(a, b, err_msg=f"chain {i}: {jax.tree_util.keystr(path)}")
