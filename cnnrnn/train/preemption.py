"""Preemption: SIGTERM or SIGINT ends training at a step boundary, after a checkpoint.

What a preempted cloud VM, `scancel`, Kubernetes and a TPU maintenance event send is
SIGTERM, followed by SIGKILL after a grace period. The trainer asks `PreemptionWatcher.
reached(step)` after every step; once it says True the trainer saves that step, waits
for the write to be committed and raises `Preempted`, which the command line turns into
exit code `PREEMPTED_EXIT_CODE` so that a launcher can requeue the job (launch/).

- Before the watcher is armed (`arm()`, or the first `reached()`, i.e. until the first
  training step is done) there is nothing to save: a signal ends the process at once
  with exit code 128 + N and one line (`cnnrnn.signals.exit_now`).
- One process, armed: Python handlers for SIGTERM and SIGINT set a flag. The first signal
  also puts both signals back to their default action, so a second one ends the process
  at once, by the kernel, even while the main thread is blocked in a save.
- Several processes (`jax.distributed.initialize` was called): JAX's own C++ handler
  catches SIGTERM and its preemption service makes every process agree on one step
  (`multihost_utils.reached_preemption_sync_point`), so all of them save the same step.
  A Python SIGTERM handler would replace JAX's and the sync point would never fire, so
  none is installed for SIGTERM; SIGINT (Ctrl-C) is forwarded to JAX's handler as a
  SIGTERM. After the sync point, both signals get their default action back (abort).
"""

import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

from cnnrnn import signals

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry". Not
# 128 + 15 = 143, which is what a run killed by SIGTERM without saving reports.
PREEMPTED_EXIT_CODE = 75

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on a signal after saving the checkpoint of `step`."""

  exit_code = PREEMPTED_EXIT_CODE

  def __init__(self, step: int, workdir: str, signal_name: str = "a preemption notice"):
    self.step = step
    super().__init__(
        f"Stopped on {signal_name}: saved step {step} in {workdir}; the same command resumes "
        f"from it (exit code {PREEMPTED_EXIT_CODE}).")


class PreemptionWatcher:
  """Installs the signal handlers (main thread only) for the duration of a `with` block.

  Attributes:
    signal_name: the name of the first signal received here, or None.
  """

  def __init__(self):
    self.signal_name = None
    self._requested = False
    self._armed = False
    self._trained = False
    self._previous = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self) -> "PreemptionWatcher":
    if threading.current_thread() is not threading.main_thread():
      return self  # Python only lets the main thread install handlers.
    handled = (signal.SIGINT,) if self._multiprocess else _SIGNALS
    for sig in handled:
      self._previous[sig] = signal.getsignal(sig)
      signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      if handler is not None:  # None: a handler installed from C, which Python cannot restore.
        signal.signal(sig, handler)
    self._previous.clear()

  def arm(self) -> None:
    """From now on a signal saves a checkpoint before the process exits (see the module)."""
    self._armed = True

  def training_finished(self) -> None:
    """Every step is trained and saved: a signal now lets the final evaluation finish."""
    self._trained = True

  def _handle(self, signum, frame) -> None:
    if not self._armed:
      signals.exit_now(signum, frame)
    del frame
    name = signal.Signals(signum).name
    self.signal_name = self.signal_name or name
    doing = ("training is done (its last step is being saved): finishing the final evaluation"
             if self._trained else "finishing this step, saving a checkpoint, then exiting")
    os.write(2, f"\n{name} received: {doing} (send it again to abort at once).\n".encode())
    if self._multiprocess:
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      signal.raise_signal(signal.SIGTERM)  # To JAX's handler: it tells the other processes.
    else:
      for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
      self._requested = True

  def reached(self, step: int) -> bool:
    """True when training should save `step` and stop; the same answer on every process.

    Every process must call it after every step, starting from the same step. The first
    call arms the watcher.
    """
    self._armed = True
    if not self._multiprocess:
      return self._requested
    try:
      reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # jax_enable_preemption_service is off: no agreement possible.
      logging.log_first_n(logging.WARNING, "JAX's preemption service is off: a SIGTERM "
                          "to a multi-process run cannot save a checkpoint first.", 1)
      return False
    if reached:
      self.signal_name = self.signal_name or "SIGTERM"
      if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
          signal.signal(sig, signal.SIG_DFL)  # JAX's handler has done its job.
    return reached
