"""accel="auto" on accelerators: plain XLA, decided without touching the CPU kernels."""

import pytest

from cnnrnn import accel
from cnnrnn.accel import native, switch


@pytest.mark.parametrize("backend", ["gpu", "cuda", "rocm", "tpu"])
def test_auto_is_xla_on_a_non_cpu_backend(monkeypatch, backend):
  monkeypatch.setattr(switch.jax, "default_backend", lambda: backend)

  def must_not_build():
    raise AssertionError("the native CPU kernels were consulted on a non-CPU backend")

  monkeypatch.setattr(native, "available", must_not_build)
  assert accel.resolve("auto") == "xla"
  assert accel.resolve("cpu_native") == "cpu_native"  # Asked for explicitly: kept.
