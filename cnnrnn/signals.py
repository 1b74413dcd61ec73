"""SIGINT and SIGTERM before training: end the process at once, with one line.

The command lines (`cnnrnn.main`, `cnnrnn.sample`, `cnnrnn.translate`) call `install()`
as their first instruction. Until the trainer's `PreemptionWatcher` is armed (after the
first training step), a signal has nothing to save, and Python's own handling fails in
start-up: a KeyboardInterrupt raised inside one of XLA's garbage-collector callbacks is
"ignored" and the run trains on; one raised while XLA's threads start or a module is half
imported ends in SIGSEGV or SIGABRT at exit. So the handler writes one line and leaves
with `os._exit(128 + signal)` (130 for SIGINT, 143 for SIGTERM), skipping the
interpreter's teardown; what start-up writes (config.json, a checkpoint set aside) is
written atomically, and the workdir lock is an `flock` the kernel releases.

A signal that arrives while the main thread is inside one long C++ call (an XLA
compilation) takes effect when that call returns. This module imports nothing heavy: it
runs before JAX is imported.
"""

import os
import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
  """128 + N, what a shell reports for a process ended by signal N."""
  return 128 + int(signum)


def exit_now(signum, frame=None, *, what: str = "with no training step to save") -> None:
  """The start-up handler: one line on stderr, then `os._exit(128 + signum)`."""
  del frame
  name = signal.Signals(signum).name
  os.write(2, f"\n{name} received {what}: exiting at once ({exit_code(signum)}).\n".encode())
  os._exit(exit_code(signum))  # pylint: disable=protected-access


def install() -> None:
  """Makes SIGINT and SIGTERM end the process at once (main thread only; else a no-op)."""
  if threading.current_thread() is not threading.main_thread():
    return
  for sig in HANDLED:
    signal.signal(sig, exit_now)
