"""Probe: do XLA:CPU's own library paths (oneDNN, XNNPACK, YNNPACK fusions) beat its default?

Each setting of `SETTINGS` runs in a subprocess of its own (XLA reads $XLA_FLAGS once, at
start-up), which times cnnrnn's training steps traced as plain XLA (`accel="xla"`: no
native kernels, so that the flags decide) against PyTorch eager in the same process,
interleaved (harness.interleave), medians. The step is compiled once, ahead of time; the
compiled program's library calls are counted (YNNPACK/XNNPACK/oneDNN fusions and custom
calls) and its text fingerprinted, so that a flag which leaves the program unchanged is
reported as such ("same program as default") instead of timed. `--repeat` runs the whole
list again, in reverse order, and the table gives every run's speed vs PyTorch. Not a test;
not used by the library.

    python experiments/benchmarks/probe_xla_flags.py [--models=lenet5,cifar_resnet20,vit_ti16]
        [--settings=default,ynn_conv,...] [--rounds=3] [--steps=2] [--repeat=2]
"""

import argparse
import hashlib
import json
import os
from pathlib import Path
import re
import statistics
import subprocess
import sys
import tempfile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

_P = "--xla_cpu_experimental_"
# name -> extra XLA flags (the value spellings are those of XLA's flag help, printed when a
# value is wrong: fusion types dot, eltwise, reduce; '+'/'-' add to / remove from the
# default list; YNNPACK also takes individual_dot and individual_convolution).
SETTINGS = {
    "default": "",
    "onednn_dot": f"{_P}onednn_fusion_type=dot",
    "onednn_all": f"{_P}onednn_fusion_type=dot,eltwise,reduce",
    "onednn_all_no_ynn": f"{_P}onednn_fusion_type=dot,eltwise,reduce {_P}ynn_fusion_type=",
    "onednn_custom_call": f"{_P}onednn_custom_call=true",
    "xnn_all": f"{_P}xnn_fusion_type=dot,eltwise,reduce",
    "xnn_all_no_ynn": f"{_P}xnn_fusion_type=dot,eltwise,reduce {_P}ynn_fusion_type=",
    "xnn_graph_greedy": f"{_P}xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "xnn_graph_slinky": f"{_P}xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY_SLINKY",
    "ynn_conv": f"{_P}ynn_fusion_type=+individual_convolution",
    "ynn_eltwise_reduce": f"{_P}ynn_fusion_type=+eltwise,+reduce",
    "ynn_off": f"{_P}ynn_fusion_type=",
    "vector_width_128": "--xla_cpu_prefer_vector_width=128",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
}
_LIBRARY_CALLS = r"__(?:ynn|xnn|onednn)_fusion|__onednn\$\w+|__xnn\w*"


def _models():
  """name -> builder of (PyTorch step, cnnrnn `harness.JaxStep` under accel="xla")."""
  import bench_cifar_resnet  # pylint: disable=g-import-not-at-top
  import bench_lenet  # pylint: disable=g-import-not-at-top

  def resnet():
    images, labels = bench_cifar_resnet.data(128)
    return (bench_cifar_resnet.torch_competitor(20, images, labels),
            bench_cifar_resnet.jax_competitor(20, images, labels, "xla"))

  def vit():
    import bench_vit  # pylint: disable=g-import-not-at-top
    comps = bench_vit.make_competitors(bench_vit.CONFIGS["ti16_224"], modes=("xla",))
    return comps["torch"], comps["ours-xla"]

  def transformer():
    import bench_transformer  # pylint: disable=g-import-not-at-top
    comps = bench_transformer.train_competitors(bench_transformer.FULL, xla=True, rbg=False)
    return comps["torch"], comps["ours-xla"]

  return {"lenet5": lambda: (bench_lenet.torch_competitor(256),
                             bench_lenet.jax_competitor(256, mode="xla")),
          "cifar_resnet20": resnet, "vit_ti16": vit, "transformer": transformer}


def _worker(models: list[str], rounds: int, steps: int, default_programs: dict) -> dict:
  for path in (str(ROOT), str(HERE)):
    sys.path.insert(0, path)
  import harness  # pylint: disable=g-import-not-at-top
  harness.apply_malloc("reuse")
  builders, out = _models(), {}
  for name in models:
    theirs, ours = builders[name]()
    compiled = ours.fn.lower(ours.state, *ours.args).compile()
    text = compiled.as_text()
    program = hashlib.sha256(re.sub(r"\s+", " ", text).encode()).hexdigest()[:12]
    calls = sorted(set(re.findall(_LIBRARY_CALLS, text)))
    result = {"program": program, "library_calls": {c: text.count(c) for c in calls}}
    if default_programs.get(name) == program:
      result["same_as_default"] = True
    else:
      ours.fn = compiled  # What the jit would run, compiled once.
      times = harness.interleave({"pytorch": theirs, "cnnrnn": ours}, rounds=rounds,
                                 steps=steps, warmup=2)
      med = {k: statistics.median(t) for k, t in times.items()}
      result.update(pytorch_ms=1e3 * med["pytorch"], cnnrnn_ms=1e3 * med["cnnrnn"],
                    ratio=med["pytorch"] / med["cnnrnn"])
    out[name] = result
    print(f"  {name}: {result}", file=sys.stderr, flush=True)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="lenet5,cifar_resnet20,vit_ti16",
                 help="of: lenet5, cifar_resnet20, vit_ti16, transformer")
  p.add_argument("--settings", default=",".join(SETTINGS), help="of: " + ", ".join(SETTINGS))
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--repeat", type=int, default=2, help="runs of the whole list")
  p.add_argument("--out", default=None, help="write every result to this JSON file")
  p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_default", default="{}", help=argparse.SUPPRESS)
  args = p.parse_args()
  models = args.models.split(",")
  if args._worker:  # pylint: disable=protected-access
    result = _worker(models, args.rounds, args.steps, json.loads(args._default))  # pylint: disable=protected-access
    Path(args._worker).write_text(json.dumps(result))  # pylint: disable=protected-access
    return
  names = args.settings.split(",")
  unknown = [n for n in names if n not in SETTINGS]
  if unknown:
    raise SystemExit(f"--settings: unknown {', '.join(unknown)}; allowed: {', '.join(SETTINGS)}")
  if "default" in names:  # First: the others are compared with its programs.
    names.remove("default")
  names.insert(0, "default")
  runs = {n: [] for n in names}
  default_programs = {}
  for rep in range(args.repeat):
    order = names if rep % 2 == 0 else [names[0]] + names[:0:-1]
    for name in order:
      env = dict(os.environ)
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SETTINGS[name]).strip()
      print(f"run {rep + 1}, {name}: XLA_FLAGS={env['XLA_FLAGS']!r}", file=sys.stderr,
            flush=True)
      with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), f"--_worker={out}",
               f"--models={args.models}", f"--rounds={args.rounds}", f"--steps={args.steps}",
               f"--_default={json.dumps(default_programs if name != 'default' else {})}"]
        proc = subprocess.run(cmd, env=env, cwd=str(ROOT), check=False, text=True,
                              capture_output=True)
        if proc.returncode != 0 or not out.exists():
          err = (proc.stderr or "").strip().splitlines()
          runs[name].append({"error": next((l for l in err if "Illegal" in l or "Error" in l),
                                           err[-1] if err else "failed")})
          continue
        result = json.loads(out.read_text())
      if name == "default":
        default_programs = {m: r["program"] for m, r in result.items()}
      runs[name].append(result)

  lines = ["| setting | XLA_FLAGS | " + " | ".join(models) + " |",
           "|---|---|" + "---|" * len(models)]
  for name in names:
    cells = []
    for m in models:
      got = [r for r in runs[name] if "error" not in r]
      if not got:
        cells.append(f"error: {runs[name][0]['error'][:80]}" if runs[name] else "not run")
        continue
      rs = [r[m] for r in got]
      if all(r.get("same_as_default") for r in rs):
        cells.append("same program as default")
        continue
      ratios = ", ".join(f"{r['ratio']:.2f}x" for r in rs if "ratio" in r)
      calls = rs[0]["library_calls"]
      lib = ", ".join(f"{k} {v}" for k, v in calls.items()) or "no library calls"
      cells.append(f"{ratios} ({statistics.median([r['cnnrnn_ms'] for r in rs if 'ratio' in r]):.0f}"
                   f" ms; {lib})")
    lines.append(f"| {name} | `{SETTINGS[name] or '(none)'}` | " + " | ".join(cells) + " |")
  print("\n".join(lines))
  if args.out:
    Path(args.out).write_text(json.dumps({"settings": SETTINGS, "runs": runs}, indent=1))


if __name__ == "__main__":
  main()
