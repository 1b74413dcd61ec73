"""Shared test helpers: where the real datasets are, and small configs."""

import os
import pathlib

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
