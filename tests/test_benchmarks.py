"""experiments/benchmarks/run_all.py: the quick smoke run writes the whole table; --isa and
--device refuse what the machine cannot do, in one line. bench_products.py: a smoke run."""

import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "experiments" / "benchmarks" / "run_all.py"


def _run_all_module():
  spec = importlib.util.spec_from_file_location("run_all", RUN_ALL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # Importing it runs nothing.
  return module


def _env():
  """This environment without the test suite's fake CPU devices (one device, as users run)."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


@pytest.mark.slow
def test_quick_run_writes_every_step(tmp_path):
  run_all = _run_all_module()
  proc = subprocess.run([sys.executable, str(RUN_ALL), "--quick", f"--out={tmp_path}"],
                        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((tmp_path / "results.json").read_text())
  assert report["quick"] and report["device"] == "cpu"
  assert [r["key"] for r in report["steps"]] == list(run_all.CPU_STEPS)
  for r in report["steps"]:
    assert r["pytorch_ms"] > 0 and r["cnnrnn_ms"] > 0, r
    assert r["ratio"] == pytest.approx(r["pytorch_ms"] / r["cnnrnn_ms"])
    if r["key"] != "beam_search":
      assert r["flops"] > 0 and 0 < r["cnnrnn_peak_share"], r
  machine = report["machine"]
  assert machine["peak_gflops"]["jax"] > 0 and machine["peak_gflops"]["torch"] > 0
  assert machine["jax"] == jax.__version__
  md = (tmp_path / "results.md").read_text()
  line = next(l for l in md.splitlines() if l.startswith("machine: "))
  assert machine["cpu"]["model"] in line and f"jax {jax.__version__}" in line
  assert "XLA " in line and "PyTorch " in line and "GFLOP/s" in line
  for r in report["steps"]:
    assert f"| {r['title']} | " in md
  # Two runs side by side (compare_results.py): a column per run, a time ratio per step.
  compare = subprocess.run(
      [sys.executable, str(RUN_ALL.parent / "compare_results.py"), str(tmp_path), str(tmp_path),
       "--names=old,new", "--times"], cwd=ROOT, capture_output=True, text=True, check=True)
  for r in report["steps"]:
    assert f"| {r['title']} | **{r['ratio']:.2f}x** | **{r['ratio']:.2f}x** |" in compare.stdout
    assert f"| {r['cnnrnn_ms']:.1f} | {r['cnnrnn_ms']:.1f} | 1.00 |" in compare.stdout
  assert compare.stdout.count(machine["cpu"]["model"]) == 2


def test_an_isa_the_cpu_lacks_is_refused():
  run_all = _run_all_module()
  cpu = {"model": "Some CPU", "flags": ["avx", "avx2", "fma"]}
  with pytest.raises(SystemExit, match=r"--isa=avx512 needs .*lacks avx512f.*Allowed here: "
                                       r"native, avx2"):
    run_all._isa_env("avx512", cpu)  # pylint: disable=protected-access
  env = run_all._isa_env("avx2", cpu)  # pylint: disable=protected-access
  assert "--xla_cpu_max_isa=AVX2" in env["XLA_FLAGS"]
  assert (env["CNNRNN_NATIVE_MAX_ISA"], env["ATEN_CPU_CAPABILITY"],
          env["ONEDNN_MAX_CPU_ISA"], env["CNNRNN_BENCH_YNNPACK_MAX_ISA"]) == (
              "avx2", "avx2", "AVX2", "avx2")


def test_a_cap_that_did_not_take_effect_is_refused():
  run_all = _run_all_module()
  cpu = {"model": "Some CPU", "flags": ["avx2", "fma", "avx512f"], "widest_isa": "avx512"}
  info = {"native_isa": "avx2", "native_available": True, "native_reason": "",
          "torch_cpu_capability": "AVX512"}
  log = ("xla_cpu_max_isa` is set. Will not use features newer than: AVX2\n"
         "onednn_verbose,v1,info,cpu,isa:Intel AVX2\n")
  with pytest.raises(SystemExit, match="PyTorch uses AVX512, not AVX2"):
    run_all._verify("avx2", info, log, cpu)  # pylint: disable=protected-access
  with pytest.raises(SystemExit, match="YNNPACK uses sse2,avx2,fma3,avx512f"):
    run_all._verify("avx2", {**info, "torch_cpu_capability": "AVX2",  # pylint: disable=protected-access
                             "ynnpack": "sse2,avx2,fma3,avx512f"}, log, cpu)
  used = run_all._verify("avx2", {**info, "torch_cpu_capability": "AVX2",  # pylint: disable=protected-access
                                  "ynnpack": "sse2,avx2,fma3"}, log, cpu)
  assert used["xla"] == "AVX2" and used["onednn"] == "Intel AVX2"
  assert used["ynnpack"] == "sse2,avx2,fma3"


def test_ynnpack_capped_at_avx2_still_computes():
  """The AVX2 emulation's YNNPACK cap (ynnpack_isa.py) in a fresh process: the flags it reads
  lose every AVX-512 bit, keep AVX2 and FMA3 where the CPU has them, and a product YNNPACK
  runs after the cap still equals NumPy's."""
  code = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, jax, jax.numpy as jnp
import ynnpack_isa
before, after = ynnpack_isa.cap("avx2")
assert ynnpack_isa.flags() == after == before & 127, (before, after)
a = np.random.default_rng(0).standard_normal((300, 96), np.float32)
b = np.random.default_rng(1).standard_normal((96, 200), np.float32)
got = np.asarray(jax.jit(jnp.matmul)(a, b))
np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)
print(ynnpack_isa.names(before), "->", ynnpack_isa.names(after))
"""
  proc = subprocess.run([sys.executable, "-c", code, str(RUN_ALL.parent)], env=_env(), cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  before, after = proc.stdout.strip().splitlines()[-1].split(" -> ")
  assert "avx512" not in after
  assert set(after.split(",")) == set(before.split(",")) & {
      "sse2", "ssse3", "sse41", "avx", "f16c", "avx2", "fma3"}


@pytest.mark.skipif(any(d.platform == "gpu" for d in jax.devices()), reason="a GPU is here")
@pytest.mark.slow
def test_gpu_table_without_a_gpu_stops_with_one_line(tmp_path):
  proc = subprocess.run([sys.executable, str(RUN_ALL), "--device=gpu", f"--out={tmp_path}"],
                        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines() == [
      "run_all: --device=gpu: JAX sees no GPU here (jax.devices('gpu') failed); the GPU "
      "table needs a CUDA build of JAX and an NVIDIA GPU"]
  assert not list(tmp_path.iterdir())


def test_gpu_peaks_by_device_kind():
  spec = importlib.util.spec_from_file_location("gpu_steps", RUN_ALL.with_name("gpu_steps.py"))
  gpu_steps = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gpu_steps)  # Importing it runs nothing.
  assert gpu_steps.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert gpu_steps.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert gpu_steps.peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
  assert gpu_steps.peak_tflops("NVIDIA L4") == 121.0
  assert gpu_steps.peak_tflops("Some Future GPU") is None


def test_products_benchmark_smoke_run():
  """bench_products.py --tiny: the native kernel, XLA and PyTorch agree on a^T b and on a
  batched a b^T (the script checks them against float64 before timing) and one table per
  product comes out."""
  from cnnrnn.accel import native  # pylint: disable=g-import-not-at-top
  if not native.available()[0]:
    pytest.skip(f"native kernels unavailable: {native.available()[1]}")
  proc = subprocess.run([sys.executable, str(RUN_ALL.parent / "bench_products.py"), "--tiny",
                         "--rounds=1"], env=_env(), cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines()
          if line.startswith("| ") and "competitor" not in line]
  assert rows == ["native", "xla", "torch"] * 2
