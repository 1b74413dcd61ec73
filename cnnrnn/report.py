"""Reproduction tables (paper vs ours) from the experiments' committed result files.

Each reproduction in `experiments/NAME/` keeps a small `results.json`: the paper's number
and ours for every setting, the config that produced it, the hardware and the wall time.
This command turns them into Markdown tables, and keeps the tables written in the
repository's Markdown files in step with them:

  python -m cnnrnn.report                       # every experiment's table, to stdout
  python -m cnnrnn.report --experiments=ptb_lstm,lenet5_mnist --out=report/
  python -m cnnrnn.report --write               # regenerate the blocks in README.md
  python -m cnnrnn.report --check               # exit 1 naming any block that differs
  python -m cnnrnn.report --out=report/ --run=lenet5_mnist=workdirs/lenet5_mnist

A generated block sits between `<!-- report:NAME:begin -->` and `<!-- report:NAME:end -->`
in a Markdown file; NAME is `reproductions` (the summary table, one row per experiment),
`topics` (the course map, from `docs/topics.json`) or an experiment's folder name (its
full table). `--run=EXPERIMENT=DIR` adds, for a run
of that experiment, its training curves (`EXPERIMENT_curves.png` in `--out`, from the
workdir's own `metrics.jsonl`) and its final metrics per split.

`results.json` (one object):

  title, source, hardware, wall_time   strings; `source` says where the numbers come from
  paper, claim                          the reference and, optionally, its claim in words
  rows                                  list of {id, setting, config, metric, unit, fmt,
                                        paper, ours, note[, comparable]}; `paper`/`ours` are
                                        numbers (formatted with `fmt`, then `unit`), text,
                                        or null (not reported / not run)
  summary                               {rows: [ids], note} for the summary table; a
                                        row's optional `label` names it there
  order                                 optional: the experiment's place in that table
"""

import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence

from absl import app, flags

RESULTS_FILE = "results.json"
_ROW_FIELDS = ("id", "setting", "config", "metric", "paper", "ours")
_MARKER = re.compile(r"<!-- report:([A-Za-z0-9_]+):begin -->\n(.*?)<!-- report:\1:end -->",
                     re.DOTALL)
SUMMARY = "reproductions"


class ReportError(ValueError):
  """A results file, flag or generated block that is not as it should be."""


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One experiment's committed results.

  Attributes:
    name: the folder name under `experiments/`.
    results: the parsed `results.json`.
  """
  name: str
  results: dict


def _check_results(name: str, results: dict, root: str) -> None:
  where = f"experiments/{name}/{RESULTS_FILE}"
  for field in ("title", "source", "hardware", "wall_time", "rows", "summary"):
    if field not in results:
      raise ReportError(f"{where}: missing field {field!r}")
  ids = set()
  for i, row in enumerate(results["rows"]):
    for field in _ROW_FIELDS:
      if field not in row:
        raise ReportError(f"{where}: rows[{i}] has no field {field!r}")
    for field in ("paper", "ours"):
      if not (row[field] is None or isinstance(row[field], (int, float, str))):
        raise ReportError(f"{where}: rows[{i}].{field} must be a number, text or null, "
                          f"not {type(row[field]).__name__}")
    config_file = row["config"].split(":", 1)[0]
    if not os.path.isfile(os.path.join(root, config_file)):
      raise ReportError(f"{where}: rows[{i}].config {row['config']!r}: no file {config_file}")
    ids.add(row["id"])
  unknown = [r for r in results["summary"].get("rows", []) if r not in ids]
  if unknown:
    raise ReportError(f"{where}: summary.rows names unknown row ids {unknown}; "
                      f"known: {sorted(ids)}")


def load_experiments(root: str, names: Sequence[str] | None = None) -> list[Experiment]:
  """Reads `experiments/*/results.json` under `root`, sorted by name.

  Args:
    root: the repository root.
    names: folder names to read (default: every experiment that has a results file).

  Returns:
    The experiments, each validated.

  Raises:
    ReportError: a named experiment has no results file, or a file is malformed.
  """
  base = os.path.join(root, "experiments")
  available = sorted(d for d in os.listdir(base)
                     if os.path.isfile(os.path.join(base, d, RESULTS_FILE)))
  if names:
    unknown = [n for n in names if n not in available]
    if unknown:
      raise ReportError(f"--experiments: no results file for {', '.join(unknown)}; "
                        f"available: {', '.join(available)}")
  out = []
  for name in names or available:
    path = os.path.join(base, name, RESULTS_FILE)
    try:
      with open(path, encoding="utf-8") as f:
        results = json.load(f)
    except json.JSONDecodeError as e:
      raise ReportError(f"experiments/{name}/{RESULTS_FILE}: not valid JSON ({e})") from e
    _check_results(name, results, root)
    out.append(Experiment(name, results))
  if not names:
    out.sort(key=lambda e: (e.results.get("order", len(out)), e.name))
  return out


def _value(row: dict, field: str) -> str:
  v = row[field]
  if v is None:
    return "—"
  if isinstance(v, str):
    return v
  return f"{v:{row.get('fmt', '')}}{row.get('unit', '')}"


def _label(row: dict) -> str:
  return row.get("label", row["setting"])


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def experiment_table(exp: Experiment) -> str:
  """The experiment's full table: one line per setting, paper against ours.

  Args:
    exp: the experiment.

  Returns:
    Markdown, ending with a line saying where the numbers come from.
  """
  r = exp.results
  lines = ["| setting | config | metric | paper | ours | note |",
           "|---|---|---|---:|---:|---|"]
  for row in r["rows"]:
    note = row.get("note", "")
    if row.get("comparable") is False and "not comparable" not in note:
      note = f"{note}; not comparable" if note else "not comparable"
    lines.append("| " + " | ".join(_cell(c) for c in (
        row["setting"], f"`{row['config']}`", row["metric"], _value(row, "paper"),
        _value(row, "ours"), note)) + " |")
  lines.append("")
  lines.append(f"Paper: {r.get('paper', '—')}. Hardware: {r['hardware']}; wall time: "
               f"{r['wall_time']}. Generated by `python -m cnnrnn.report` from "
               f"`experiments/{exp.name}/{RESULTS_FILE}`.")
  return "\n".join(lines) + "\n"


def summary_table(experiments: Sequence[Experiment]) -> str:
  """The summary table, one row per experiment (the README's reproductions table).

  Args:
    experiments: the experiments, in the order of the rows.

  Returns:
    Markdown.
  """
  lines = ["| experiment | paper | ours | hardware, wall time | details |",
           "|---|---|---|---|---|"]
  for exp in experiments:
    r = exp.results
    by_id = {row["id"]: row for row in r["rows"]}
    rows = [by_id[i] for i in r["summary"]["rows"]]
    paper_parts = []
    if r.get("claim"):
      paper_parts.append(r["claim"])
    numeric = [row for row in rows if row["paper"] is not None]
    if numeric and r["summary"].get("numeric_paper", True):
      paper_parts.append(" · ".join(f"{_label(row)} {_value(row, 'paper')}"
                                    for row in numeric))
    ours = " · ".join(f"{_label(row)} {_value(row, 'ours')}" for row in rows)
    caveats = [row["note"] for row in rows if row.get("comparable") is False]
    if caveats:
      ours += " (" + "; ".join(caveats) + ")"
    if r["summary"].get("note"):
      ours += f": {r['summary']['note']}"
    link = f"[experiments/{exp.name}](experiments/{exp.name}/README.md)"
    lines.append("| " + " | ".join(_cell(c) for c in (
        r["title"], "; ".join(paper_parts) or "—", ours,
        f"{r['hardware']}, {r['wall_time']}")) + f" | {link} |")
  lines.append("")
  lines.append("Generated by `python -m cnnrnn.report --write` from each experiment's "
               f"`{RESULTS_FILE}`.")
  return "\n".join(lines) + "\n"


def topics_table(topics: Sequence[dict], experiments: Sequence[Experiment]) -> str:
  """The course map: topic -> model -> config -> experiment -> reproduced number.

  Args:
    topics: entries of `docs/topics.json`: {topic, models, config, experiment, rows}; a
      row is `ID` (in the entry's only experiment) or `EXPERIMENT/ID`.
    experiments: every experiment, to look the rows up in.

  Returns:
    Markdown.

  Raises:
    ReportError: a topic names an unknown experiment or row.
  """
  by_name = {e.name: e for e in experiments}
  lines = ["| course topic | model (`models.create`) | config | experiment | reproduced (paper) |",
           "|---|---|---|---|---|"]
  for i, t in enumerate(topics):
    names = [n.strip() for n in (t.get("experiment") or "").split(",") if n.strip()]
    for n in names:
      if n not in by_name:
        raise ReportError(f"docs/topics.json[{i}]: unknown experiment {n!r}; known: "
                          f"{', '.join(sorted(by_name))}")
    numbers = []
    for ref in t.get("rows", []):
      exp_name, _, row_id = ref.rpartition("/")
      exp_name = exp_name or (names[0] if len(names) == 1 else "")
      rows = {r["id"]: r for r in by_name[exp_name].results["rows"]} if exp_name in by_name else {}
      if row_id not in rows:
        raise ReportError(f"docs/topics.json[{i}]: no row {ref!r}")
      row = rows[row_id]
      paper = f" ({_value(row, 'paper')})" if row["paper"] is not None else ""
      numbers.append(f"{row['setting']}: {_value(row, 'ours')}{paper}")
    configs = ", ".join(f"`{c.strip()}`" for c in (t.get("config") or "").split(", ") if c.strip())
    lines.append("| " + " | ".join(_cell(c) for c in (
        t["topic"], ", ".join(f"`{m}`" for m in t["models"]), configs or "—",
        ", ".join(f"`experiments/{n}`" for n in names) or "—",
        "; ".join(numbers) or "—")) + " |")
  lines.append("")
  lines.append("Generated by `python -m cnnrnn.report --write` from `docs/topics.json` and the "
               f"experiments' `{RESULTS_FILE}`.")
  return "\n".join(lines) + "\n"


def load_topics(root: str) -> list[dict] | None:
  """`docs/topics.json` under `root`, or None when there is none."""
  path = os.path.join(root, "docs", "topics.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def blocks(experiments: Sequence[Experiment], topics: Sequence[dict] | None = None
           ) -> dict[str, str]:
  """Every generated block by name: `reproductions`, `topics` and each experiment's name."""
  out = {SUMMARY: summary_table(experiments)}
  if topics is not None:
    out["topics"] = topics_table(topics, experiments)
  for exp in experiments:
    out[exp.name] = experiment_table(exp)
  return out


def markdown_files(root: str) -> list[str]:
  """The Markdown files that may hold generated blocks: the README and the experiments'."""
  files = [os.path.join(root, "README.md")]
  base = os.path.join(root, "experiments")
  for d in sorted(os.listdir(base)):
    path = os.path.join(base, d, "README.md")
    if os.path.isfile(path):
      files.append(path)
  docs = os.path.join(root, "docs")
  for dirpath, _, names in os.walk(docs):
    if "_build" in dirpath:
      continue
    files.extend(os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".md"))
  return files


_LINK = re.compile(r"\[(experiments/[A-Za-z0-9_]+)\]\(experiments/[A-Za-z0-9_]+/README\.md\)")


def localise(block: str, rel_path: str) -> str:
  """The block as the file at `rel_path` holds it: links into `experiments/` from the root's
  README, plain names in the documentation (whose pages link only to each other)."""
  if os.path.dirname(rel_path) == "":
    return block
  return _LINK.sub(r"`\1`", block)


def sync_blocks(root: str, generated: dict[str, str], *, write: bool) -> list[str]:
  """Compares (or rewrites) every generated block in the repository's Markdown files.

  Args:
    root: the repository root.
    generated: the blocks as `blocks()` returns them.
    write: rewrite the blocks that differ instead of only reporting them.

  Returns:
    One line per block that differs (before rewriting): `FILE: table NAME ...`.

  Raises:
    ReportError: a file has a block whose name nothing generates.
  """
  differing = []
  for path in markdown_files(root):
    with open(path, encoding="utf-8") as f:
      text = f.read()
    rel = os.path.relpath(path, root)

    def replace(m, rel=rel):
      name = m.group(1)
      if name not in generated:
        raise ReportError(f"{rel}: block 'report:{name}' names no table; known: "
                          f"{', '.join(sorted(generated))}")
      block = localise(generated[name], rel)
      if m.group(2) != block:
        differing.append(f"{rel}: table {name!r} differs from what "
                         f"{'the results files give' if name == SUMMARY else f'experiments/{name}/{RESULTS_FILE} gives'}")
      return f"<!-- report:{name}:begin -->\n{block}<!-- report:{name}:end -->"

    new = _MARKER.sub(replace, text)
    if write and new != text:
      with open(path, "w", encoding="utf-8") as f:
        f.write(new)
  return differing


def final_metrics(workdir: str) -> dict[str, dict]:
  """The last record of each split in `workdir`/metrics.jsonl."""
  from cnnrnn.analysis.curves import read_metrics  # pylint: disable=g-import-not-at-top
  last = {}
  for record in read_metrics(workdir):
    last[record.get("split", "train")] = record
  return last


def workdir_report(name: str, workdir: str, out: str) -> str:
  """Curves PNG and a final-metrics table for one run of an experiment.

  Args:
    name: the experiment's name (used for the PNG's file name).
    workdir: a cnnrnn workdir with `metrics.jsonl`.
    out: the folder to write `NAME_curves.png` into.

  Returns:
    Markdown: the final metrics of each split and the figure.
  """
  from cnnrnn.analysis.curves import plot_curves  # pylint: disable=g-import-not-at-top
  last = final_metrics(workdir)
  keys = sorted({k for rec in last.values() for k, v in rec.items()
                 if isinstance(v, (int, float)) and k not in ("step", "split")})
  metrics = [k for k in ("loss", "accuracy", "perplexity", "mse", "bleu") if k in keys][:3]
  png = os.path.join(out, f"{name}_curves.png")
  plot_curves(workdir, out=png, metrics=metrics or keys[:2], title=name)
  lines = [f"Run `{workdir}`:", "", "| split | step | " + " | ".join(keys) + " |",
           "|---|---:|" + "---:|" * len(keys)]
  for split, rec in last.items():
    vals = [f"{rec[k]:.6g}" if isinstance(rec.get(k), (int, float)) else "" for k in keys]
    lines.append(f"| {split} | {rec.get('step', '')} | " + " | ".join(vals) + " |")
  lines += ["", f"![curves]({os.path.basename(png)})", ""]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, on absl's global FLAGS: defined when run as a program, not
  on import (other cnnrnn programs define flags of the same names, and one process may
  import several)."""
  flags.DEFINE_list("experiments", [], "Experiment folder names (default: all).")
  flags.DEFINE_bool("check", False, "Exit 1 if a generated block in a committed Markdown "
                    "file differs from the results files.")
  flags.DEFINE_bool("write", False, "Rewrite the generated blocks in place.")
  flags.DEFINE_string("out", None, "Folder for NAME.md tables (and curves with --run).")
  flags.DEFINE_multi_string("run", [], "EXPERIMENT=DIR: curves and final "
                            "metrics of a run of that experiment (needs --out).")
  flags.DEFINE_string("root", ".", "The repository root.")


def _parse_workdirs(specs: Sequence[str], known: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for spec in specs:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
      raise ReportError(f"--run={spec!r}: expected EXPERIMENT=DIR")
    if name not in known:
      raise ReportError(f"--run={spec!r}: unknown experiment {name!r}; known: "
                        f"{', '.join(known)}")
    if not os.path.isfile(os.path.join(path, "metrics.jsonl")):
      raise ReportError(f"--run={spec!r}: no metrics.jsonl in {path}")
    out.append((name, path))
  return out


def run(root: str, *, names: Sequence[str] = (), check: bool = False, write: bool = False,
        out: str | None = None, workdirs: Sequence[str] = ()) -> int:
  """What the command does; returns its exit code. Every argument is checked first.

  Raises:
    ReportError: a bad argument or results file (the message is one line).
  """
  if check and write:
    raise ReportError("--check and --write exclude each other")
  if not os.path.isdir(os.path.join(root, "experiments")):
    raise ReportError(f"--root={root!r}: no experiments/ folder (run from the repository root)")
  if workdirs and not out:
    raise ReportError("--run needs --out (the folder for the curves)")
  if out and os.path.exists(out) and not os.path.isdir(out):
    raise ReportError(f"--out={out!r} is a file, not a folder")
  experiments = load_experiments(root, names)
  runs = _parse_workdirs(workdirs, [e.name for e in experiments])
  topics = load_topics(root)
  generated = blocks(experiments)
  if check or write:
    all_generated = blocks(load_experiments(root) if names else experiments, topics)
    differing = sync_blocks(root, all_generated, write=write)
    if check:
      for line in differing:
        print(f"error: {line} (regenerate with python -m cnnrnn.report --write)",
              file=sys.stderr)
      return 1 if differing else 0
    for line in differing:
      print(f"rewrote {line.split(':')[0]}: {line.split(': ', 1)[1].split(' differs')[0]}")
    return 0
  if out:
    os.makedirs(out, exist_ok=True)
    for name, text in generated.items():
      extra = "".join("\n" + workdir_report(name, path, out) for n, path in runs if n == name)
      with open(os.path.join(out, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(text + extra)
    print(f"wrote {len(generated)} tables to {out}")
    return 0
  for name, text in generated.items():
    print(f"## {name}\n\n{text}")
  return 0


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  try:
    code = run(FLAGS.root, names=FLAGS.experiments, check=FLAGS.check, write=FLAGS.write,
               out=FLAGS.out, workdirs=FLAGS.run)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  sys.exit(code)


if __name__ == "__main__":
  define_flags()
  app.run(main)
