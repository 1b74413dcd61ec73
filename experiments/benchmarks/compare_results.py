"""Tables of several `run_all.py` results side by side: one column of ratios per run.

    python experiments/benchmarks/compare_results.py DIR_A DIR_B [...] [--names=A,B,...]
                                                     [--times]

Each DIR holds a `results.json` written by `run_all.py` (another commit's, another CPU
kind's). Prints a Markdown table: one row per step of any run, one column per run with its
speed against PyTorch (PyTorch time / cnnrnn time, above 1: cnnrnn faster); with
`--times`, also each run's cnnrnn milliseconds, and the ratio of the last run's cnnrnn
time to the first's (below 1: the last run's step is faster). Under the table, each run's
machine line and command, so that no figure is without its machine.
"""

import argparse
import json
import os


def load(path: str) -> dict:
  with open(os.path.join(path, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def machine_line(result: dict) -> str:
  m = result["machine"]
  cpu, used = m["cpu"], m.get("isa_used", {})
  return (f"{cpu['model']} ({cpu['arch']}, {cpu['cores']} cores, widest ISA "
          f"{cpu['widest_isa']}), --isa={m.get('isa', 'native')}: XLA {used.get('xla')}, "
          f"cnnrnn kernels {used.get('native')}, PyTorch {used.get('torch')} (oneDNN "
          f"{used.get('onednn')}); jax {m['jax']}, torch {m['torch']}; matmul peak JAX "
          f"{m['peak_gflops']['jax']:.0f} / PyTorch {m['peak_gflops']['torch']:.0f} GFLOP/s")


def table(results: list[dict], names: list[str], times: bool) -> str:
  rows, titles = [], {}
  for result in results:
    for step in result["steps"]:
      if step["key"] not in titles:
        titles[step["key"]] = step["title"]
        rows.append(step["key"])
  by_run = [{s["key"]: s for s in r["steps"]} for r in results]
  head = ["step"] + [f"{n}: speed vs PyTorch" for n in names]
  if times:
    head += [f"{n}: cnnrnn ms" for n in names] + [f"{names[-1]} / {names[0]} time"]
  lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
  for key in rows:
    cells = [titles[key]]
    steps = [run.get(key) for run in by_run]
    cells += [f"**{s['ratio']:.2f}x**" if s else "—" for s in steps]
    if times:
      cells += [f"{s['cnnrnn_ms']:.1f}" if s else "—" for s in steps]
      first, last = steps[0], steps[-1]
      cells.append(f"{last['cnnrnn_ms'] / first['cnnrnn_ms']:.2f}" if first and last else "—")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  for name, result in zip(names, results):
    lines.append(f"- {name}: {result['date']}, {machine_line(result)}; `{result['command']}`")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("dirs", nargs="+", help="folders holding a run_all.py results.json")
  p.add_argument("--names", default=None, help="column names, comma-separated")
  p.add_argument("--times", action="store_true", help="also cnnrnn's milliseconds")
  args = p.parse_args()
  names = args.names.split(",") if args.names else [os.path.basename(d.rstrip("/"))
                                                     for d in args.dirs]
  if len(names) != len(args.dirs):
    p.error(f"--names has {len(names)} names for {len(args.dirs)} folders")
  print(table([load(d) for d in args.dirs], names, args.times))


if __name__ == "__main__":
  main()
