"""Building and loading the native CPU kernels (C++ through the XLA FFI).

The sources beside this file are compiled on first use with the system's C++ compiler
(`$CXX`, else `g++`) against jaxlib's FFI headers, for this machine's CPU (`-march=native`),
and cached under `$CNNRNN_CACHE_DIR` (default `~/.cache/cnnrnn`); the compilation prints one
line. Nothing here runs at import: `available()` builds and loads the library the first
time it is called, which `cnnrnn.accel` does only when acceleration was asked for (the
"cpu_native" or "auto" mode) and a program is lowered. Where the kernels cannot be built
(no compiler, no AVX-512, not Linux/x86-64) or with `CNNRNN_NATIVE=0`, `available()` says
why not and the primitives of `cnnrnn.accel` lower to XLA's operations.

Kernels: `kernels.cc` (convolutions, BatchNorm's channel sums), `recurrent.cc` (LSTM time
loops), `embedding.cc` (embedding gradient), `matmul.cc`
(products with the left operand transposed).
"""

import ctypes
import functools
import hashlib
import logging
import os
from pathlib import Path
import platform
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np

_SOURCES = tuple(Path(__file__).with_name(name)
                 for name in ("kernels.cc", "recurrent.cc", "embedding.cc", "matmul.cc",
                              "common.h"))
# FFI target name -> handler symbol in the library.
TARGETS = {
    "cnnrnn_conv2d_fwd": "CnnrnnConv2dForward",
    "cnnrnn_conv2d_dw": "CnnrnnConv2dWeightGrad",
    "cnnrnn_channel_sums": "CnnrnnChannelSums",
    "cnnrnn_lstm_fwd": "CnnrnnLstmForward",
    "cnnrnn_lstm_bwd": "CnnrnnLstmBackward",
    "cnnrnn_rows_grad": "CnnrnnRowsGrad",
    "cnnrnn_matmul_tn": "CnnrnnMatmulTN",
}

log = logging.getLogger(__name__)


def _cpu_flags() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return ""


# Vector instruction sets the kernels are built for, widest first, each with the CPU flags it
# needs (as /proc/cpuinfo names them).
ISAS = {"avx512": ("avx512f",)}
_MAX_ISA_ENV = "CNNRNN_NATIVE_MAX_ISA"


def cpu_isa() -> str | None:
  """The widest instruction set in `ISAS` that this CPU has, else None.

  `$CNNRNN_NATIVE_MAX_ISA` caps it (one of `ISAS`, or "none" to act as a CPU with none of
  them), as XLA's `--xla_cpu_max_isa` caps XLA's code.
  """
  cap = os.environ.get(_MAX_ISA_ENV, "").lower() or None
  if cap is not None and cap != "none" and cap not in ISAS:
    raise ValueError(f"{_MAX_ISA_ENV}={cap!r}; allowed: {', '.join(ISAS)}, none")
  if cap == "none" or platform.machine() != "x86_64":
    return None
  names = list(ISAS)
  flags = set(_cpu_flags().split())
  for isa in names[names.index(cap) if cap else 0:]:
    if all(f in flags for f in ISAS[isa]):
      return isa
  return None


def compile_library(cxx: str, out: Path) -> None:
  """Compiles the sources into the shared library `out` (atomically replaced)."""
  # One line of progress: the first build takes 10-20 s.
  print(f"cnnrnn.accel: compiling the native CPU kernels into {out}", file=sys.stderr, flush=True)
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_out = Path(tmp) / out.name
    cmd = [cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-isystem",
           jax.ffi.include_dir(), *(str(p) for p in _SOURCES if p.suffix == ".cc"), "-o",
           str(tmp_out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    os.replace(tmp_out, out)  # Atomic: concurrent processes may compile at the same time.


@functools.cache
def _load() -> tuple[bool, str]:
  """Compiles (once per machine and source), loads and registers the kernels."""
  if os.environ.get("CNNRNN_NATIVE", "1") == "0":
    return False, "disabled by CNNRNN_NATIVE=0"
  if platform.system() != "Linux" or platform.machine() != "x86_64":
    return False, f"needs Linux on x86-64, not {platform.system()} on {platform.machine()}"
  flags = _cpu_flags()
  if cpu_isa() is None:
    return False, f"the CPU has none of the instruction sets the kernels need ({', '.join(ISAS)})"
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    return False, "no C++ compiler (set $CXX or install g++)"
  key = hashlib.sha256(b"\0".join(
      [*(p.read_bytes() for p in _SOURCES), jax.__version__.encode(), cxx.encode(),
       flags.encode()])).hexdigest()[:16]
  cache = Path(os.environ.get("CNNRNN_CACHE_DIR", Path.home() / ".cache" / "cnnrnn"))
  library = cache / "native" / f"kernels-{key}.so"
  try:
    if not library.exists():
      compile_library(cxx, library)
    lib = ctypes.cdll.LoadLibrary(str(library))
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (OSError, RuntimeError, AttributeError) as e:
    log.warning("Native kernels unavailable, using XLA's: %s", e)
    return False, str(e)
  return True, ""


def available() -> tuple[bool, str]:
  """(True, "") once the native kernels are built and loaded, else (False, the reason).

  The first call may compile them (one line on stderr says so).
  """
  return _load()


def ffi_call(target: str, out, *args, **attrs):
  """Calls an FFI target with result shape(s) `out`; int attributes as int64, bools as bool."""
  ok, why = available()
  if not ok:
    raise RuntimeError(f"cnnrnn's native kernels are unavailable: {why}")
  attrs = {k: np.bool_(v) if isinstance(v, bool) else np.int64(v) for k, v in attrs.items()}
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)
