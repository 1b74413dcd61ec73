"""Caps the instruction set of YNNPACK, the matmul library inside jaxlib, for AVX2 emulation.

`--xla_cpu_max_isa=AVX2` caps the code XLA generates, not the libraries it calls: YNNPACK,
which runs XLA:CPU's dot products, picks its kernels from what the CPU reports (cpuinfo), so
on an AVX-512 CPU it keeps running AVX-512 kernels under that flag (`perf record` of a
jitted [3152, 192] x [192, 768] product with the flag: `ynn::dot_fp32_5x64x1_1x16x1_avx512`,
zmm registers). It has no setting of its own. What it reads is one word,
`ynn::get_supported_arch_flags()`'s cached result (bits: sse2 ... fma3 = bits 0-6,
avx512f and up = bits 7-14, ynnpack/base/arch.h); `cap()` computes that word once, then
clears the bits above the cap, before any product runs. The addresses come from
libjax_common.so's symbol table (jaxlib ships it unstripped); where a jaxlib lacks these
symbols, `cap()` raises, and an AVX2 emulation cannot be trusted for products.

A benchmarking tool only: nothing in the library calls it, and it changes nothing but which
of YNNPACK's own kernels run (their results agree to float32 rounding).
"""

import ctypes
import functools
from pathlib import Path

import numpy as np

_FUNCTION = "_ZN3ynn24get_supported_arch_flagsEv"
_CACHED = "_ZZN3ynn24get_supported_arch_flagsEvE5flags"
# YNNPACK's arch flags kept under each cap (ynnpack/base/arch.h: sse2, ssse3, sse41, avx,
# f16c, avx2, fma3 are bits 0-6).
_KEEP = {"avx2": (1 << 7) - 1}


def _symbols(path: Path, names: set[str]) -> dict[str, int]:
  """name -> st_value of the named symbols in the ELF64 file's .symtab."""
  data = np.memmap(path, dtype=np.uint8, mode="r")
  header = data[:64].tobytes()
  if header[:4] != b"\x7fELF" or header[4] != 2:
    raise ValueError(f"{path} is not an ELF64 file")
  shoff = int.from_bytes(header[0x28:0x30], "little")
  shentsize = int.from_bytes(header[0x3A:0x3C], "little")
  shnum = int.from_bytes(header[0x3C:0x3E], "little")
  sections = []
  for i in range(shnum):
    s = data[shoff + i * shentsize: shoff + (i + 1) * shentsize].tobytes()
    sections.append({"type": int.from_bytes(s[4:8], "little"),
                     "offset": int.from_bytes(s[24:32], "little"),
                     "size": int.from_bytes(s[32:40], "little"),
                     "link": int.from_bytes(s[40:44], "little")})
  symtab = next((s for s in sections if s["type"] == 2), None)  # SHT_SYMTAB
  if symtab is None:
    raise ValueError(f"{path} has no symbol table (stripped)")
  strtab = sections[symtab["link"]]
  dtype = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                    ("value", "<u8"), ("size", "<u8")])
  table = np.frombuffer(data[symtab["offset"]: symtab["offset"] + symtab["size"]], dtype)
  strings = data[strtab["offset"]: strtab["offset"] + strtab["size"]].tobytes()
  found = {}
  for name in names:
    at = strings.find(b"\0" + name.encode() + b"\0")
    if at < 0:
      continue
    hits = table["value"][table["name"] == at + 1]
    if len(hits):
      found[name] = int(hits[0])
  return found


def _load_base(path: Path) -> int:
  """Where the dynamic loader mapped `path`'s first byte in this process."""
  real = str(path.resolve())
  for line in Path("/proc/self/maps").read_text().splitlines():
    parts = line.split()
    if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
      return int(parts[0].split("-")[0], 16)
  raise RuntimeError(f"{real} is not mapped in this process")


@functools.cache
def _addresses() -> tuple[int, int]:
  """Where YNNPACK's arch-flag function and its cached result are in this process (the
  library's symbol table is read once)."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  from jaxlib import _jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  path = Path(jaxlib.__file__).parent / "libjax_common.so"
  found = _symbols(path, {_FUNCTION, _CACHED})
  if len(found) != 2:
    raise RuntimeError(f"ynnpack_isa: {path} lacks YNNPACK's arch-flag symbols "
                       f"(found {sorted(found)}); YNNPACK cannot be capped in this jaxlib")
  base = _load_base(path)
  return base + found[_FUNCTION], base + found[_CACHED]


def _cached_flags() -> ctypes.c_uint64:
  """YNNPACK's cached arch flags in this process, computed first if they were not yet."""
  function, cached_at = _addresses()
  computed = ctypes.CFUNCTYPE(ctypes.c_uint64)(function)()
  cached = ctypes.c_uint64.from_address(cached_at)
  if cached.value != computed:
    raise RuntimeError("ynnpack_isa: YNNPACK's cached arch flags are not where the symbol "
                       "table says")
  return cached


def flags() -> int:
  """The arch flags YNNPACK chooses its kernels by in this process."""
  return _cached_flags().value


def cap(isa: str) -> tuple[int, int]:
  """Caps YNNPACK at `isa` ("avx2") in this process; (its flags before, after). Call after
  importing jax and before the first computation."""
  if isa not in _KEEP:
    raise ValueError(f"ynnpack_isa.cap: isa must be one of {sorted(_KEEP)}, got {isa!r}")
  cached = _cached_flags()
  before = cached.value
  cached.value = before & _KEEP[isa]
  return before, cached.value


def names(value: int) -> str:
  """YNNPACK's x86 arch flags as text ("sse2,...,fma3")."""
  bits = ("sse2", "ssse3", "sse41", "avx", "f16c", "avx2", "fma3", "avx512f", "avx512bw",
          "avx512bf16", "avx512fp16", "avx512vnni", "amxbf16", "amxfp16", "amxint8")
  return ",".join(b for i, b in enumerate(bits) if value >> i & 1) or "none"
