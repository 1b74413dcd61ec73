"""reuse_freed_memory: XLA's per-call buffers stop arriving on fresh pages."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")

# Each call of a jitted function returns a new 96 MB array (above glibc's mmap threshold),
# deleted at once; prints the fewest minor page faults of a call after warm-up. A freed
# block returns to the heap a few calls later (more under load), hence the minimum.
_PROGRAM = """
import json, resource, sys
from cnnrnn.train import host_memory
applied = host_memory.reuse_freed_memory() if sys.argv[1] == "reuse" else None
import jax, jax.numpy as jnp
f = jax.jit(lambda x: x + 1.0)
x = jnp.zeros((24 << 20,), jnp.float32)
faults = []
for _ in range(20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready().delete()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": min(faults[8:])}))
"""


def _faults_per_call(mode):
  out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], check=True, capture_output=True,
                       text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
  return json.loads(out.strip().splitlines()[-1])


def _huge_pages_always():
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[always]" in f.read()
  except OSError:
    return False


@pytest.mark.slow
def test_reused_memory_takes_no_page_faults_per_call():
  pages = (96 << 20) // 4096
  default = _faults_per_call("default")
  if not _huge_pages_always():  # Else a fault maps 2 MB at once.
    assert default["faults"] > 0.5 * pages  # glibc maps every result afresh
  reused = _faults_per_call("reuse")
  assert reused["applied"] is True
  assert reused["faults"] < 0.02 * pages


def test_cpu_backend_expected_follows_jax_platforms(monkeypatch):
  from cnnrnn.train import host_memory  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not host_memory.cpu_backend_expected()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.cpu_backend_expected()
