"""Shared test helpers: where the real datasets are, and small configs."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATASETS = pathlib.Path(
    os.environ.get("CNNRNN_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_dataset(name: str) -> str:
  """Path of ../shared/datasets/<name>; skips the test when that copy is absent."""
  path = SHARED_DATASETS / name
  if not path.is_dir():
    pytest.skip(f"real dataset {name} not found at {path} (set CNNRNN_SHARED_DATASETS)")
  return str(path)


def override(config, **fields):
  """Sets dotted fields of `config` (e.g. override(c, **{"optimizer.name": "sgd"}))."""
  for key, value in fields.items():
    *path, last = key.split(".")
    target = config
    for part in path:
      target = target[part]
    target[last] = value
  return config


def cli(config_file: str, workdir, data_dir, devices: int, *flags):
  """(command, subprocess kwargs) of a `cnnrnn.main` run on `devices` fake CPU devices."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             "--xla_cpu_collective_call_terminate_timeout_seconds=600")
  cmd = [sys.executable, "-m", "cnnrnn.main", f"--config={config_file}", f"--workdir={workdir}",
         f"--config.dataset.data_dir={data_dir}", "--config.progress_bar=False", *flags]
  return cmd, dict(cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def restore_state(workdir, step: int) -> dict:
  """A checkpoint's train state as numpy arrays, whatever device layout wrote it."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree,
                          is_leaf=lambda m: hasattr(m, "shape"))
    return jax.device_get(ckptr.restore(path, target))
