"""Test-wide JAX settings: 8 fake CPU devices and strict rank promotion.

No persistent compilation cache: with jax 0.10.2 an 8-device CPU executable loaded from
it deadlocked in its first all-reduce (7 of 8 device threads reached the rendezvous).
"""

import os

# Must happen before JAX initialises its backends.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One TFDS data_dir per test session; datasets are prepared into it on first use."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))
