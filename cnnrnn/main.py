"""Command line: python -m cnnrnn.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.FIELD=VALUE ...]

Running the same command again on the same workdir resumes from its last checkpoint.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.json.")
_MULTIPROCESS = flags.DEFINE_bool(
    "multiprocess", None,
    "Call jax.distributed.initialize() (several processes). Default: when --num_processes, "
    "JAX_COORDINATOR_ADDRESS or a SLURM job with several tasks is present. On Cloud TPU pods "
    "and SLURM, JAX finds the coordinator, process count and id itself.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of configuration/data errors.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Drops INFO records of orbax/grain/TFDS (dozens per checkpoint); keeps warnings."""

  _NOISY = ("orbax", "grain", "tensorflow_datasets", "etils")

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(n in record.pathname for n in self._NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if config.get("xla_flags"):
    # Read by XLA when the backend starts, which is below: importing jax does not start it.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {config.xla_flags}".strip()
  from cnnrnn.train import host_memory  # pylint: disable=g-import-not-at-top
  if config.get("reuse_host_memory", True) and host_memory.cpu_backend_expected():
    host_memory.reuse_freed_memory()  # Before XLA's threads allocate (see its docstring).
  import jax  # pylint: disable=g-import-not-at-top

  multiprocess = _MULTIPROCESS.value
  if multiprocess is None:
    multiprocess = (_NUM_PROCESSES.value is not None or "JAX_COORDINATOR_ADDRESS" in os.environ
                    or int(os.environ.get("SLURM_NTASKS", "1")) > 1)
  if multiprocess:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only processes.
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  from cnnrnn.train import train_and_evaluate  # pylint: disable=g-import-not-at-top

  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  try:
    train_and_evaluate(config, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    # Configuration and data errors carry their own explanation; a traceback adds noise.
    if _TRACEBACK.value:
      raise
    sys.exit(f"error: {e}\n(--traceback shows where it was raised)")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
