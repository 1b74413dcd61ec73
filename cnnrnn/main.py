"""Command line: python -m cnnrnn.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.FIELD=VALUE ...]

Running the same command again on the same workdir resumes from its last checkpoint.

Exit codes: 0 done; 1 an error, explained in one line (`--traceback` for the traceback);
75 (`PREEMPTED_EXIT_CODE`, EX_TEMPFAIL) stopped by SIGTERM/SIGINT after saving a
checkpoint: run the same command again (launch/ scripts requeue on it); 130 / 143 a
SIGINT / SIGTERM before the first training step was done (nothing to save; exits at once,
`cnnrnn.signals`); 128 + N killed by signal N (a second SIGTERM/SIGINT aborts at once).
"""

if __name__ == "__main__":
  # First of all: a signal during the imports below ends the process at once, in one line.
  from cnnrnn import signals as _signals  # pylint: disable=g-import-not-at-top

  _signals.install()

import difflib
import errno
import importlib.util
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

FLAGS = flags.FLAGS


class _WithModelFields(flags.ArgumentParser):
  """The config file's parser (ml_collections'), plus the chosen model's fields.

  `--config.model.FIELD=VALUE` may set any keyword argument of the model (the one the file
  names, or `--config.model.name`), also one the config file leaves out: such a field is
  added, with the model's default, before the command line's values are applied. The
  config is locked afterwards, so that any other unknown field is still an error.
  """

  def __init__(self, file_parser: flags.ArgumentParser):
    self._file_parser = file_parser  # Built with lock_config=False: locked here.

  def parse(self, argument):
    config = self._file_parser.parse(argument)
    if isinstance(config, ml_collections.ConfigDict):
      name, fields = _model_overrides(FLAGS.read_flags_from_files(sys.argv, force_gnu=False))
      if "model" in config and fields:
        from cnnrnn.train import defaults  # pylint: disable=g-import-not-at-top

        chosen = config.model.get("name")
        config.model.name = name if name is not None else chosen  # Only to find its fields.
        defaults.add_model_fields(config, fields)
        config.model.name = chosen  # The command line's value is applied after this.
      config.lock()
    return config

  def flag_type(self):
    return self._file_parser.flag_type()


def _model_overrides(argv: list[str]) -> tuple[str | None, list[str]]:
  """(the last `--config.model.name` value or None, the `--config.model.FIELD`s set)."""
  name, fields = None, []
  for a in argv:
    match = re.match(r"-{1,2}(no)?config\.model\.([^.=]+)(=(.*))?$", a)
    if match and match.group(2) == "name":
      name = match.group(4)
    elif match:
      fields.append(match.group(2))
  return name, fields


def define_flags() -> None:
  """Defines the command line's flags on absl's global `FLAGS` (`run` calls it).

  Not done on import: other cnnrnn programs (`cnnrnn.sample`, `cnnrnn.report`) define flags
  of the same names, and one process (a notebook, a test run) may import several.
  """
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                  lock_config=False)
  FLAGS["config"].parser = _WithModelFields(FLAGS["config"].parser)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
  flags.DEFINE_bool(
      "multiprocess", None,
      "Call jax.distributed.initialize() (several processes). Default: when --num_processes, "
      "JAX_COORDINATOR_ADDRESS or a SLURM job with several tasks is present. On Cloud TPU pods "
      "and SLURM, JAX finds the coordinator, process count and id itself.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.DEFINE_bool("traceback", False, "Show the full traceback of configuration/data errors.")
  flags.DEFINE_list(
      "allow_change", [], "Config fields (or blocks, e.g. optimizer) a resume may change from "
      "the run's saved config.json, e.g. --allow_change=num_train_steps to extend a run.")
  flags.DEFINE_bool(
      "start_over", False, "When the workdir has checkpoints but none passes its checks (they "
      "are set aside), train from step 0 instead of refusing.")
  flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT_CODE = 75  # Equal to cnnrnn.train.preemption.PREEMPTED_EXIT_CODE (not imported: jax).


class _QuietLibraries:
  """Drops INFO records of orbax/grain/TFDS (dozens per checkpoint); keeps warnings."""

  _NOISY = ("orbax", "grain", "tensorflow_datasets", "etils")

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(n in record.pathname for n in self._NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    config = FLAGS.config
    config.keys()  # The config loads lazily: a missing or broken file fails here.
  except Exception as e:  # pylint: disable=broad-except
    if FLAGS.traceback:
      raise
    sys.exit(f"error: {_config_file_error(sys.argv, e)}\n(--traceback shows where it was raised)")
  if config.get("xla_flags"):
    # Read by XLA when the backend starts, which is below: importing jax does not start it.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {config.xla_flags}".strip()
  from cnnrnn.train import host_memory  # pylint: disable=g-import-not-at-top
  if config.get("reuse_host_memory", True) and host_memory.cpu_backend_expected():
    host_memory.reuse_freed_memory()  # Before XLA's threads allocate (see its docstring).
  import jax  # pylint: disable=g-import-not-at-top

  multiprocess = FLAGS.multiprocess
  if multiprocess is None:
    multiprocess = (FLAGS.num_processes is not None or "JAX_COORDINATOR_ADDRESS" in os.environ
                    or int(os.environ.get("SLURM_NTASKS", "1")) > 1)
  if multiprocess:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only processes.
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  from cnnrnn.train import train_and_evaluate  # pylint: disable=g-import-not-at-top

  # pylint: disable-next=g-import-not-at-top
  from cnnrnn.train import checkpoint, preemption, workdir_lock

  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  try:
    train_and_evaluate(config, FLAGS.workdir, allow_changes=FLAGS.allow_change,
                       start_over=FLAGS.start_over)
  except preemption.Preempted as e:
    print(f"{e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except (ValueError, FileNotFoundError, FloatingPointError, workdir_lock.WorkdirLocked,
          checkpoint.NoUsableCheckpoint) as e:
    # Configuration and data errors carry their own explanation; a traceback adds noise.
    if FLAGS.traceback:
      raise
    if _DISK_FULL.search(str(e)):  # Tensorstore's own wording, deep in Orbax's threads.
      sys.exit(f"error: the disk is full: a checkpoint could not be written in "
               f"{os.path.join(FLAGS.workdir, 'checkpoints')}; the ones before it are intact. "
               f"Free some space and run the same command again.")
    sys.exit(f"error: {e}\n(--traceback shows where it was raised)")
  except Exception as e:  # pylint: disable=broad-except
    cause = _os_error(e)
    if cause is None or FLAGS.traceback:
      raise
    sys.exit(f"error: {_describe_os_error(cause)}\n(--traceback shows where it was raised)")


def _os_error(e: BaseException) -> OSError | None:
  """The OSError behind `e` (a disk, a path, a permission, a download), following causes and
  contexts: the outermost one, so that a message that says what to do (e.g. which file to
  put where when a download fails offline, the original reason after it) is kept."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError) and (e.errno or e.filename or str(e)):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


_DISK_FULL = re.compile(r"No space left on device|os_error_code='28'|Disk quota exceeded")


def _describe_os_error(e: OSError) -> str:
  """E.g. "the disk is full: ... (/path)"."""
  what = {errno.ENOSPC: "the disk is full", errno.EROFS: "the filesystem is read-only",
          errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded",
          errno.ENOTDIR: "a path component is a file, not a directory"}.get(e.errno)
  detail = e.strerror or str(e)
  if what and detail == os.strerror(e.errno or 0):
    detail = what
  elif what and not detail.startswith(what):
    detail = f"{what}: {detail}"
  return f"{detail} ({e.filename})" if e.filename else detail


def _config_file_error(argv: list[str], e: Exception) -> str:
  """One line for a config file or --config.FIELD override that cannot be loaded."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return f"--config is required ({e})"
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    return f"--config={spec}: no such config file {os.path.abspath(path)}"
  try:
    module_spec = importlib.util.spec_from_file_location("_cnnrnn_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as load_error:  # pylint: disable=broad-except
    return f"--config={spec} failed to load: {type(load_error).__name__}: {load_error}"
  from cnnrnn.train import config_schema, defaults  # pylint: disable=g-import-not-at-top

  known = set(config_schema.flat_fields(config))
  name, _ = _model_overrides(argv)
  name = name if name is not None else config.get("model", {}).get("name")
  try:
    model_fields = sorted(defaults.model_fields(name))
  except ValueError as unknown_model:
    model_fields = None
    if any(re.match(r"-{1,2}(no)?config\.model\.", a) for a in argv):
      return f"model.name={name!r}: {unknown_model}"
  known |= {f"model.{f}" for f in model_fields or ()}
  for a in argv:
    match = re.match(r"-{1,2}(no)?config\.([^=]+)", a)
    field = match.group(2) if match else None
    if field is not None and field not in known:
      close = difflib.get_close_matches(field, sorted(known), n=3, cutoff=0.6)
      hint = f"; did you mean {' or '.join('--config.' + c for c in close)}?" if close else ""
      if field.startswith("model.") and model_fields is not None:
        return (f"--config.{field}: model {name!r} has no field {field[len('model.'):]!r} "
                f"(its fields: {', '.join(model_fields)}){hint}")
      return f"--config.{field}: {path} has no field {field!r}{hint}"
  first = str(e).strip().splitlines()
  return f"--config={spec}: {type(e).__name__}: {first[0] if first else ''}"


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config-file and override errors as one line."""
  try:
    return app.parse_flags_with_usage(argv)  # absl's own errors: one line and exit 1.
  except Exception as e:  # pylint: disable=broad-except
    if any(a in ("--traceback", "--traceback=true") for a in argv):
      raise
    sys.exit(f"error: {_config_file_error(argv, e)}\n(--traceback shows where it was raised)")


def run():
  define_flags()
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:  # Ctrl-C before training started (during it, a checkpoint is saved).
    sys.exit(130)


if __name__ == "__main__":
  run()
