"""Building and loading the native CPU kernels (C++ through the XLA FFI).

The kernels are written once, against the vector abstraction of `simd.h`, and compiled
once per instruction set (`ISAS`: AVX-512, or AVX2 with FMA; 16 or 8 float32 lanes, with
register blocking for 32 or 16 vector registers) with explicit flags (`ISA_FLAGS`, never
`-march=native`), by the system's C++ compiler (`$CXX`, else `g++`) against jaxlib's FFI
headers. The build for the widest instruction set this CPU has (`cpu_isa()`, which
`$CNNRNN_NATIVE_MAX_ISA` caps) is compiled on first use and cached under `$CNNRNN_CACHE_DIR`
(default `~/.cache/cnnrnn`), one library per instruction set and source; the compilation
prints one line. Nothing here runs at import: `available()` builds and loads the library
the first time it is called, which `cnnrnn.accel` does only when acceleration was asked for
(the "cpu_native" or "auto" mode) and a program is lowered. Where the kernels cannot be built
(no compiler, a CPU with neither instruction set, not Linux/x86-64) or with
`CNNRNN_NATIVE=0`, `available()` says why not, one log line says so, and the primitives of
`cnnrnn.accel` lower to XLA's operations.

Kernels: `kernels.cc` (convolutions, BatchNorm's channel sums), `recurrent.cc` (LSTM time
loops), `matmul.cc` (matrix products: with the left operand transposed, and batched); `common.h` (thread-pool
loops, huge pages) and `simd.h` (vectors, masks, register blocking) are shared.
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
                 for name in ("kernels.cc", "recurrent.cc", "matmul.cc", "common.h", "simd.h"))
# FFI target name -> handler symbol in the library.
TARGETS = {
    "cnnrnn_conv2d_fwd": "CnnrnnConv2dForward",
    "cnnrnn_conv2d_dw": "CnnrnnConv2dWeightGrad",
    "cnnrnn_channel_sums": "CnnrnnChannelSums",
    "cnnrnn_lstm_fwd": "CnnrnnLstmForward",
    "cnnrnn_lstm_bwd": "CnnrnnLstmBackward",
    "cnnrnn_matmul": "CnnrnnMatmul",
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
# needs (as /proc/cpuinfo names them) and the compiler flags of its build.
ISAS = {"avx512": ("avx512f", "fma"), "avx2": ("avx2", "fma")}
ISA_FLAGS = {"avx512": ("-mavx512f", "-mfma"), "avx2": ("-mavx2", "-mfma")}
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


def compile_library(cxx: str, out: Path, isa: str) -> None:
  """Compiles the sources for instruction set `isa` (one of `ISAS`) into the shared library
  `out` (atomically replaced). The build needs only the compiler, not a CPU with `isa`."""
  # One line of progress: the first build takes 20-40 s.
  print(f"cnnrnn.accel: compiling the native CPU kernels ({isa}) into {out}", file=sys.stderr,
        flush=True)
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_out = Path(tmp) / out.name
    cmd = [cxx, "-O3", *ISA_FLAGS[isa], "-std=c++17", "-shared", "-fPIC", "-isystem",
           jax.ffi.include_dir(), *(str(p) for p in _SOURCES if p.suffix == ".cc"), "-o",
           str(tmp_out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    os.replace(tmp_out, out)  # Atomic: concurrent processes may compile at the same time.


def library_path(cxx: str, isa: str) -> Path:
  """Where the build for `isa` with compiler `cxx` of these sources is cached."""
  key = hashlib.sha256(b"\0".join(
      [*(p.read_bytes() for p in _SOURCES), jax.__version__.encode(), cxx.encode(),
       " ".join(ISA_FLAGS[isa]).encode()])).hexdigest()[:16]
  cache = Path(os.environ.get("CNNRNN_CACHE_DIR", Path.home() / ".cache" / "cnnrnn"))
  return cache / "native" / f"kernels-{isa}-{key}.so"


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


@functools.cache
def _load() -> tuple[str | None, str]:
  """Compiles (once per instruction set and source), loads and registers the kernels of
  `cpu_isa()`'s build: (the instruction set, "") or (None, why not)."""
  if os.environ.get("CNNRNN_NATIVE", "1") == "0":
    why = "disabled by CNNRNN_NATIVE=0"
  elif platform.system() != "Linux" or platform.machine() != "x86_64":
    why = f"needs Linux on x86-64, not {platform.system()} on {platform.machine()}"
  elif (isa := cpu_isa()) is None:
    why = f"the CPU has none of the instruction sets the kernels need ({', '.join(ISAS)})"
  elif (cxx := _compiler()) is None:
    why = "no C++ compiler (set $CXX or install g++)"
  else:
    library = library_path(cxx, isa)
    try:
      if not library.exists():
        compile_library(cxx, library, isa)
      lib = ctypes.cdll.LoadLibrary(str(library))
      for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    except (OSError, RuntimeError, AttributeError) as e:
      why = str(e)
    else:
      log.info("cnnrnn.accel: native CPU kernels for %s loaded from %s", isa, library)
      return isa, ""
  level = logging.INFO if why.startswith("disabled") else logging.WARNING
  log.log(level, "cnnrnn.accel: native CPU kernels unavailable, using XLA's operations: %s", why)
  return None, why


def available() -> tuple[bool, str]:
  """(True, "") once the native kernels are built and loaded, else (False, the reason).

  The first call may compile them (one line on stderr says so).
  """
  isa, why = _load()
  return isa is not None, why


def loaded_isa() -> str | None:
  """The instruction set (a key of `ISAS`) of the kernels loaded here, or None if none are
  (as `available()`, this may build them)."""
  return _load()[0]


def ffi_call(target: str, out, *args, **attrs):
  """Calls an FFI target with result shape(s) `out`; int attributes as int64, bools as bool."""
  ok, why = available()
  if not ok:
    raise RuntimeError(f"cnnrnn's native kernels are unavailable: {why}")
  attrs = {k: np.bool_(v) if isinstance(v, bool) else np.int64(v) for k, v in attrs.items()}
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)
