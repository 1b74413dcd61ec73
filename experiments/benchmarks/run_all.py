"""The whole speed table on the machine at hand: every benchmarked step, cnnrnn vs PyTorch.

    python experiments/benchmarks/run_all.py [--isa=native|avx2|avx512] [--quick]
                                             [--device=cpu|gpu] [--out=DIR]

Prints a machine line (CPU model, the vector instruction set that XLA, cnnrnn's native
kernels and PyTorch each use, cores, versions, the float32 matmul peak measured for JAX and
PyTorch with a 2048^3 product), then for every step of the benchmarks beside this file
(`bench_*.py`, whose competitors it runs as they are) the PyTorch and cnnrnn times (medians
of interleaved steps, `harness.interleave`), the speed ratio PyTorch / cnnrnn (above 1:
cnnrnn faster) and each side's share of its own measured matmul peak. It writes the table
to DIR/results.md and everything measured to DIR/results.json (DIR: --out, default
experiments/benchmarks/results/<date>-<cpu kind>).

FLOPs per step: XLA's cost analysis of cnnrnn's step traced as plain XLA
(`harness.JaxStep.flops`), except for the recurrent steps, counted by hand
(`bench_rnn.step_flops`, `bench_seq2seq.step_flops`): XLA counts a loop body once. The beam
search has no FLOP count (its length depends on when the beams finish).

Every step runs in a subprocess of its own (a --quick run: all in one), so that the
instruction-set caps below apply from the start and one step's threads and memory do not
carry into the next. `--isa` caps both sides on a CPU that has more:

  avx2     XLA_FLAGS=--xla_cpu_max_isa=AVX2, CNNRNN_NATIVE_MAX_ISA=avx2,
           ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, and YNNPACK (XLA's matmul
           library, which the XLA flag does not reach) capped in each worker
           (`ynnpack_isa.py`)
  avx512   the same with AVX512 (oneDNN: AVX512_CORE; YNNPACK as the CPU has it)
  native   nothing capped (the default)

and checks that each cap took effect (XLA's compiler log, YNNPACK's arch flags,
`cnnrnn.accel.native.cpu_isa()`, `torch.backends.cpu.get_cpu_capability()`, oneDNN's verbose
output) before timing. PyTorch's matmuls (MKL) are not capped: on AMD CPUs MKL runs its
AVX2 kernels whatever the CPU has (`mkl_blas_def_sgemm_kernel_0_zen`, ymm registers, seen
with `perf`). An ISA the CPU lacks is refused.

`--quick` is a smoke run (tiny shapes, one timed step each, XLA's optimisations off, about a
minute on an idle machine): it exercises every step and writes both files; its times mean
nothing. `--device=gpu` runs the GPU table
(ResNet-50 at 224 in bfloat16, the Transformer, the LSTM LM against cuDNN, ViT-B/16 against
timm; see `gpu_steps.py`) and stops with one line where JAX sees no GPU.
"""

import argparse
import datetime
import json
import os
from pathlib import Path
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# --isa -> (CPU flags it needs as /proc/cpuinfo names them, environment that caps every side).
ISA_CAPS = {
    "avx2": (("avx2", "fma"), {"xla": "AVX2", "native": "avx2", "aten": "avx2",
                               "onednn": "AVX2"}),
    "avx512": (("avx512f", "avx512bw", "avx512vl", "avx512dq"),
               {"xla": "AVX512", "native": "avx512", "aten": "avx512", "onednn": "AVX512_CORE"}),
}
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# What each side reports when capped (torch's get_cpu_capability(), oneDNN's "isa:" text).
_TORCH_NAMES = {"avx2": "AVX2", "avx512": "AVX512"}
_ONEDNN_NAMES = {"avx2": "AVX2", "avx512": "AVX-512"}


# ----------------------------------------------------------------------------- the steps
# Each builder (run inside a worker) returns (competitors {"pytorch": fn, "cnnrnn": fn},
# FLOPs of one step or None, how they were counted, what one timed call is).

def _lenet(quick):
  import bench_lenet  # pylint: disable=g-import-not-at-top
  batch = 4 if quick else 256
  ours = bench_lenet.jax_competitor(batch)
  return {"pytorch": bench_lenet.torch_competitor(batch), "cnnrnn": ours}, ours.flops, "xla"


def _resnet20(quick):
  import bench_cifar_resnet  # pylint: disable=g-import-not-at-top
  images, labels = bench_cifar_resnet.data(2 if quick else 128)
  ours = bench_cifar_resnet.jax_competitor(20, images, labels)
  theirs = bench_cifar_resnet.torch_competitor(20, images, labels)
  return {"pytorch": theirs, "cnnrnn": ours}, ours.flops, "xla"


def _rnn(name):
  def build(quick):
    import bench_rnn  # pylint: disable=g-import-not-at-top
    cfg = bench_rnn.CONFIGS[name]
    if quick:
      cfg = dict(cfg, hidden=16, seq=4, batch=2, vocab=50)
    comps = bench_rnn.make_competitors(cfg, names=("ours", "torch"))
    return ({"pytorch": comps["torch"], "cnnrnn": comps["ours"]},
            lambda: bench_rnn.step_flops(cfg), "hand")
  return build


def _transformer(quick):
  import bench_transformer  # pylint: disable=g-import-not-at-top
  cfg = bench_transformer.TINY if quick else bench_transformer.FULL
  comps = bench_transformer.train_competitors(cfg, rbg=False)
  return {"pytorch": comps["torch"], "cnnrnn": comps["ours"]}, comps["ours"].flops, "xla"


def _vit(name):
  def build(quick):
    import bench_vit  # pylint: disable=g-import-not-at-top
    cfg = bench_vit.TINY if quick else bench_vit.CONFIGS[name]
    comps = bench_vit.make_competitors(cfg)
    return {"pytorch": comps["torch"], "cnnrnn": comps["ours"]}, comps["ours"].flops, "xla"
  return build


def _seq2seq(quick):
  import bench_seq2seq  # pylint: disable=g-import-not-at-top
  cfg = bench_seq2seq.TINY if quick else bench_seq2seq.FULL
  ours, _ = bench_seq2seq.jax_train_step(cfg, 0)
  theirs, _ = bench_seq2seq.torch_train_step(cfg, 0)
  return {"pytorch": theirs, "cnnrnn": ours}, lambda: bench_seq2seq.step_flops(cfg), "hand"


def _beam_search(quick):
  import bench_transformer  # pylint: disable=g-import-not-at-top
  cfg = bench_transformer.TINY if quick else bench_transformer.FULL
  comps = bench_transformer.decode_competitors(cfg)
  return {"pytorch": comps["torch"], "cnnrnn": comps["ours"]}, None, None


# key -> (row title, builder, timed steps per turn in a full run).
CPU_STEPS = {
    "lenet5": ("LeNet-5, B=256", _lenet, 10),
    "cifar_resnet20": ("CIFAR ResNet-20, B=128", _resnet20, 3),
    "lstm_lm": ("LSTM LM 2x650, B=20, T=35", _rnn("lstm_lm"), 3),
    "gru_lm": ("GRU LM 2x650, B=20, T=35", _rnn("gru_lm"), 3),
    "char_lstm": ("char LSTM 512, B=64, T=128", _rnn("char_lstm"), 3),
    "transformer": ("Transformer 3+3, d 256, B=128, 30+30 tokens", _transformer, 2),
    "vit_ti16": ("ViT-Ti/16 at 224, B=16 (vs timm)", _vit("ti16_224"), 2),
    "vit_p4": ("patch-4 ViT, B=128 (vs timm)", _vit("p4_32"), 2),
    "seq2seq": ("attention seq2seq (BiGRU 512 + Bahdanau), B=128", _seq2seq, 2),
    "beam_search": ("Transformer beam search, K=4, 128 sentences", _beam_search, 2),
}


# ----------------------------------------------------------------------------- workers

def _worker_paths():
  for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
      sys.path.insert(0, path)


def _cap_ynnpack() -> str:
  """Caps YNNPACK as $CNNRNN_BENCH_YNNPACK_MAX_ISA says (set by `_isa_env`); its flags as text."""
  import ynnpack_isa  # pylint: disable=g-import-not-at-top
  isa = os.environ.get("CNNRNN_BENCH_YNNPACK_MAX_ISA")
  try:
    return ynnpack_isa.names(ynnpack_isa.cap(isa)[1] if isa else ynnpack_isa.flags())
  except RuntimeError as e:  # A jaxlib whose YNNPACK cannot be found.
    if isa:
      raise
    return f"unknown ({e})"


def _machine_worker(quick: bool) -> dict:
  """Versions, the ISA each side uses, and the float32 matmul peak of JAX and PyTorch."""
  _worker_paths()
  import harness  # pylint: disable=g-import-not-at-top
  harness.apply_malloc("reuse")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from cnnrnn.accel import native  # pylint: disable=g-import-not-at-top
  info = {"ynnpack": _cap_ynnpack(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__, "torch": torch.__version__,
          "torch_threads": torch.get_num_threads(),
          "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
  try:
    import timm  # pylint: disable=g-import-not-at-top
    info["timm"] = timm.__version__
  except ImportError:
    info["timm"] = None
  try:
    info["native_isa"] = native.cpu_isa()
    ok, why = native.available()
    info["native_available"], info["native_reason"] = ok, why
  except ValueError as e:  # A cap the kernels do not know.
    info["native_isa"], info["native_available"], info["native_reason"] = None, False, str(e)
  # oneDNN reports its ISA (ONEDNN_VERBOSE, set by the parent) on its first primitive.
  x = torch.randn(8, 16, 16, 16, requires_grad=True)
  torch.nn.functional.conv2d(x, torch.randn(16, 16, 3, 3), padding=1).sum().backward()

  n = 2048
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  jmm = jax.jit(jnp.matmul)
  times = harness.interleave({"jax": lambda: jax.block_until_ready(jmm(ja, jb)),
                              "torch": lambda: torch.mm(ta, tb)},
                             rounds=2 if quick else 5, steps=2 if quick else 3, warmup=1)
  flops = 2.0 * n ** 3
  info["peak_gflops"] = {k: flops / statistics.median(t) / 1e9 for k, t in times.items()}
  info["jax_backend"] = jax.default_backend()
  info["jax_devices"] = [d.device_kind for d in jax.devices()]
  return info


def _steps_worker(keys: list[str], quick: bool, rounds: int | None, steps: int | None) -> list:
  _worker_paths()
  import harness  # pylint: disable=g-import-not-at-top
  harness.apply_malloc("reuse")
  _cap_ynnpack()
  results = []
  for key in keys:
    title, build, full_steps = CPU_STEPS[key]
    print(f"run_all: {key} ...", file=sys.stderr, flush=True)
    competitors, flops_fn, counted_by = build(quick)
    times = harness.interleave(
        competitors, rounds=rounds or (1 if quick else 5),
        steps=steps or (1 if quick else full_steps), warmup=1 if quick else 2)
    flops = float(flops_fn()) if flops_fn is not None else None
    med = {k: statistics.median(t) for k, t in times.items()}
    results.append({
        "key": key, "title": title, "flops": flops, "flops_counted_by": counted_by,
        "pytorch_ms": 1e3 * med["pytorch"], "cnnrnn_ms": 1e3 * med["cnnrnn"],
        "ratio": med["pytorch"] / med["cnnrnn"],
        "times_ms": {k: [1e3 * x for x in t] for k, t in times.items()}})
  return results


# ----------------------------------------------------------------------------- the parent

def _cpu_info() -> dict:
  model, flags = platform.processor() or platform.machine(), set()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name") and model in ("", platform.machine(),
                                                     platform.processor()):
        model = line.split(":", 1)[1].strip()
      elif line.startswith("flags") and not flags:
        flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  widest = next((name for name in ("avx512", "avx2")
                 if all(f in flags for f in ISA_CAPS[name][0])), None)
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"model": model, "arch": platform.machine(), "cores": os.cpu_count(),
          "usable_cores": usable, "widest_isa": widest,
          "flags": sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))}


def _isa_env(isa: str, cpu: dict) -> dict:
  """The environment of every worker for `--isa` (refuses an ISA the CPU lacks)."""
  env = dict(os.environ)
  if isa == "native":
    return env
  needs, caps = ISA_CAPS[isa]
  missing = [f for f in needs if f not in cpu["flags"]]
  if missing:
    raise SystemExit(f"run_all: --isa={isa} needs CPU flags {', '.join(needs)}; this CPU "
                     f"({cpu['model']}) lacks {', '.join(missing)}. Allowed here: "
                     f"{', '.join(['native'] + [k for k in ISA_CAPS if _has(cpu, k)])}")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_cpu_max_isa={caps['xla']}").strip()
  env["CNNRNN_NATIVE_MAX_ISA"] = caps["native"]
  env["ATEN_CPU_CAPABILITY"] = caps["aten"]
  env["ONEDNN_MAX_CPU_ISA"] = caps["onednn"]
  if isa == "avx2":
    env["CNNRNN_BENCH_YNNPACK_MAX_ISA"] = "avx2"
  return env


def _has(cpu: dict, isa: str) -> bool:
  return all(f in cpu["flags"] for f in ISA_CAPS[isa][0])


def _run_worker(args: argparse.Namespace, env: dict, what: str, capture: bool = False):
  """Runs this file as a worker for `what` ("machine" or step keys); (its JSON, its output)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "out.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--_worker={what}", f"--_json={out}"]
    cmd += ["--quick"] if args.quick else []
    cmd += [f"--rounds={args.rounds}"] if args.rounds else []
    cmd += [f"--steps={args.steps}"] if args.steps else []
    proc = subprocess.run(cmd, env=env, cwd=str(ROOT), check=False, text=True,
                          capture_output=capture)
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0 or not out.exists():
      tail = "\n".join(output.splitlines()[-30:])
      return None, f"worker {what} failed (exit {proc.returncode})\n{tail}"
    return json.loads(out.read_text()), output


def _verify(isa: str, info: dict, log: str, cpu: dict) -> dict:
  """The ISA each side uses, checked against the cap `isa` asked for; raises if one differs."""
  m = re.search(r"Will not use features newer than: (\S+)", log)
  xla = m.group(1) if m else (cpu["widest_isa"] or "below AVX2").upper() + " (host)"
  m = re.search(r"onednn_verbose.*?,isa:([^\n,]+)", log)
  onednn = m.group(1).strip() if m else "not reported"
  native = info["native_isa"] or "none"
  if not info["native_available"]:
    native += f" (kernels unavailable: {info['native_reason']}; cnnrnn runs plain XLA)"
  used = {"xla": xla, "ynnpack": info.get("ynnpack", "not reported"), "native": native,
          "torch": info["torch_cpu_capability"], "onednn": onednn}
  if isa != "native":
    caps = ISA_CAPS[isa][1]
    wrong = []
    if xla != caps["xla"]:
      wrong.append(f"XLA uses {xla}, not {caps['xla']}")
    if isa == "avx2" and "avx512" in used["ynnpack"]:
      wrong.append(f"YNNPACK uses {used['ynnpack']}")
    if info["native_isa"] not in (caps["native"], None):
      wrong.append(f"the native kernels use {info['native_isa']}, not {caps['native']}")
    if info["native_reason"].startswith("CNNRNN_NATIVE_MAX_ISA"):
      wrong.append(f"the native kernels refused the cap: {info['native_reason']}")
    if info["torch_cpu_capability"] != _TORCH_NAMES[isa]:
      wrong.append(f"PyTorch uses {info['torch_cpu_capability']}, not {_TORCH_NAMES[isa]}")
    if _ONEDNN_NAMES[isa] not in onednn or (isa == "avx2" and "512" in onednn):
      wrong.append(f"oneDNN uses {onednn!r}, not {_ONEDNN_NAMES[isa]}")
    if wrong:
      raise SystemExit(f"run_all: --isa={isa} did not take effect: {'; '.join(wrong)}")
  return used


def machine_line(machine: dict) -> str:
  cpu, used, peak = machine["cpu"], machine["isa_used"], machine["peak_gflops"]
  return (f"{cpu['model']} ({cpu['arch']}, {cpu['cores']} cores, {cpu['usable_cores']} usable; "
          f"CPU has {cpu['widest_isa'] or 'neither AVX2 nor AVX-512'}), --isa={machine['isa']}: "
          f"XLA {used['xla']} (YNNPACK {used.get('ynnpack', 'not reported')}), "
          f"cnnrnn native kernels {used['native']}, PyTorch {used['torch']} "
          f"(oneDNN {used['onednn']}); jax {machine['jax']}, jaxlib {machine['jaxlib']}, "
          f"torch {machine['torch']} ({machine['torch_threads']} threads), timm "
          f"{machine['timm']}; float32 matmul peak (2048^3): JAX {peak['jax']:.0f} GFLOP/s, "
          f"PyTorch {peak['torch']:.0f} GFLOP/s")


def _share(flops, ms, peak_gflops):
  return None if flops is None else flops / (ms * 1e-3) / (peak_gflops * 1e9)


def markdown(report: dict) -> str:
  machine = report["machine"]
  lines = [f"## Speed vs PyTorch, {report['date']}", "",
           f"machine: {machine_line(machine)}", "",
           f"command: `{report['command']}`" + ("  (a --quick smoke run: tiny shapes, the "
                                                 "times mean nothing)" if report["quick"] else ""),
           "", "Medians of interleaved steps (PyTorch eager vs cnnrnn's step as the trainer "
           "compiles it, accel=\"auto\"); speed = PyTorch time / cnnrnn time (above 1: cnnrnn "
           "faster); % of peak = FLOPs per step / time / that side's measured matmul peak.", "",
           "| step | PyTorch ms | cnnrnn ms | speed vs PyTorch | GFLOP/step | PyTorch % of peak "
           "| cnnrnn % of peak |", "|---|---:|---:|---:|---:|---:|---:|"]
  for r in report["steps"]:
    if "error" in r:
      lines.append(f"| {r['title']} | failed | | | | | |")
      continue
    pct = lambda x: "—" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    gflop = "—" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}" + (
        " (by hand)" if r["flops_counted_by"] == "hand" else "")
    lines.append(f"| {r['title']} | {r['pytorch_ms']:.1f} | {r['cnnrnn_ms']:.1f} | "
                 f"**{r['ratio']:.2f}x** | {gflop} | {pct(r['pytorch_peak_share'])} | "
                 f"{pct(r['cnnrnn_peak_share'])} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--isa", choices=("native", *ISA_CAPS), default="native",
                 help="cap every side's vector instruction set (emulates a CPU without more)")
  p.add_argument("--quick", action="store_true", help="a smoke run: tiny shapes, one step each")
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--out", default=None, help="folder for results.md and results.json")
  p.add_argument("--steps_only", default=None,
                 help="comma-separated step keys (default: all): " + ", ".join(CPU_STEPS))
  p.add_argument("--rounds", type=int, default=None, help="A B alternations (default 5)")
  p.add_argument("--steps", type=int, default=None, help="timed steps per turn")
  p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_json", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args._worker:  # pylint: disable=protected-access
    if args._worker == "machine":  # pylint: disable=protected-access
      result = _machine_worker(args.quick)
    elif args._worker == "gpu":  # pylint: disable=protected-access
      _worker_paths()
      import gpu_steps  # pylint: disable=g-import-not-at-top
      result = gpu_steps.run(args.quick, args.rounds, args.steps)
    else:
      result = _steps_worker(args._worker.split(","), args.quick, args.rounds,  # pylint: disable=protected-access
                             args.steps)
    Path(args._json).write_text(json.dumps(result))  # pylint: disable=protected-access
    return 0

  sys.path.insert(0, str(HERE))
  cpu = _cpu_info()
  env = _isa_env(args.isa, cpu)
  if args.quick:  # Compile fast: a smoke run's times mean nothing.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + QUICK_XLA_FLAGS).strip()
  date = datetime.datetime.now(datetime.timezone.utc)
  kind = {"avx512": "avx512", "avx2": "avx2"}.get(args.isa, cpu["widest_isa"] or "cpu")
  out = Path(args.out) if args.out else HERE / "results" / (
      f"{date:%Y%m%d-%H%M}-{args.device if args.device == 'gpu' else kind}")
  command = "python experiments/benchmarks/run_all.py " + " ".join(
      shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

  if args.device == "gpu":
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices('gpu')[0])"],
                           env=env, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
      raise SystemExit("run_all: --device=gpu: JAX sees no GPU here (jax.devices('gpu') "
                       "failed); the GPU table needs a CUDA build of JAX and an NVIDIA GPU")
    import gpu_steps  # pylint: disable=g-import-not-at-top
    return gpu_steps.main(args, env, out, date, command, _run_worker)

  # The machine: every side's ISA is read from what it reports (verbose logs on).
  probe_env = dict(env, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="0",
                   TF_CPP_VMODULE="cpu_compiler=1")
  info, log = _run_worker(args, probe_env, "machine", capture=True)
  if info is None:
    raise SystemExit(f"run_all: {log}")
  machine = {**info, "cpu": cpu, "isa": args.isa,
             "isa_used": _verify(args.isa, info, log, cpu)}
  print(f"machine: {machine_line(machine)}", flush=True)

  keys = args.steps_only.split(",") if args.steps_only else list(CPU_STEPS)
  unknown = [k for k in keys if k not in CPU_STEPS]
  if unknown:
    raise SystemExit(f"run_all: --steps_only: unknown {', '.join(unknown)}; allowed: "
                     f"{', '.join(CPU_STEPS)}")
  results, failed = [], []
  for group in ([keys] if args.quick else [[k] for k in keys]):
    got, log = _run_worker(args, env, ",".join(group))
    if got is None:
      failed.append(log)
      results += [{"key": k, "title": CPU_STEPS[k][0], "error": log} for k in group]
      continue
    for r in got:
      r["pytorch_peak_share"] = _share(r["flops"], r["pytorch_ms"], info["peak_gflops"]["torch"])
      r["cnnrnn_peak_share"] = _share(r["flops"], r["cnnrnn_ms"], info["peak_gflops"]["jax"])
      print(f"{r['title']}: PyTorch {r['pytorch_ms']:.1f} ms, cnnrnn {r['cnnrnn_ms']:.1f} ms, "
            f"{r['ratio']:.2f}x", flush=True)
    results += got

  report = {"date": f"{date:%Y-%m-%d %H:%M} UTC", "command": command, "quick": args.quick,
            "device": "cpu", "machine": machine, "steps": results}
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(report, indent=1))
  (out / "results.md").write_text(markdown(report))
  print()
  print(markdown(report))
  print(f"written: {out / 'results.md'}, {out / 'results.json'}")
  if failed:
    print("\n\n".join(failed), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
