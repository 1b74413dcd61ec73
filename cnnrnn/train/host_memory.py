"""Host-memory policy for training on the CPU: keep freed memory and reuse it.

XLA:CPU allocates a step's temporaries afresh on every step, as one block (120 MB for the
2x650 LSTM language model). glibc's malloc `mmap`s blocks this large (by default, those
over 32 MB) and unmaps them when they are freed, so every step touches fresh pages:
~25,000 page faults per LSTM LM step, 10-15% of its time (experiments/benchmarks/README.md).

`reuse_freed_memory()` turns `mmap` off for large blocks, makes every thread allocate from
the main heap (XLA allocates from its own threads, and a thread's secondary arena `mmap`s
blocks of 64 MB or more whatever the settings) and keeps up to 2 GiB of freed memory at
the top of the heap instead of returning it to the system: after the first step, the same
pages serve every step. The cost is memory that stays with the process once freed, as
with a caching allocator. The command line applies it when JAX will compute on the CPU
(`cpu_backend_expected()`), unless `config.reuse_host_memory` is False.
"""

import ctypes
import importlib.metadata
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt() parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_KEEP_BYTES = 2**31 - 1  # The largest trim threshold mallopt takes (an int).


def reuse_freed_memory() -> bool:
  """Sets glibc's malloc to reuse freed memory (see the module docstring).

  Call it before JAX's backend starts (the first computation or `jax.devices()`): threads
  that have already allocated keep their arena. Affects the whole process (PyTorch's
  CPU tensors too).

  Returns:
    True if applied; False where the C library is not glibc or the call failed.
  """
  if platform.system() != "Linux":
    return False
  libc = ctypes.CDLL(None)
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
    return False  # Not glibc (musl's mallopt does nothing).
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    started = xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    started = False
  if started:
    log.warning("reuse_freed_memory() called after JAX's backend started: XLA's threads "
                "keep their malloc arenas and most of the effect is lost")
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP_BYTES))
  return all(libc.mallopt(ctypes.c_int(p), ctypes.c_int(v)) == 1 for p, v in settings)


def cpu_backend_expected() -> bool:
  """Whether JAX will compute on the CPU, judged before its backend starts.

  True if $JAX_PLATFORMS names "cpu" first, or is unset and no GPU or TPU plugin of jaxlib
  (jax-cuda*, jax-rocm*, libtpu) is installed.
  """
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    if name.startswith(("jax-cuda", "jax-rocm", "libtpu")):
      return False
  return True
