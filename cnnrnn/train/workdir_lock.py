"""One run per workdir: an exclusive `flock` on `workdir`/lock.

The kernel releases a `flock` when its process exits however it exits (kill -9
included), so a lock left by a killed run is free again at once and needs no staleness
test: the file's contents (pid, host, start time, command) only name the holder for the
message a second run gets. On network filesystems `flock` is as good as the server's
locking (NFSv4 and Lustre with `flock` mounts support it).
"""

import datetime
import fcntl
import json
import os
import socket
import sys

LOCK_FILE = "lock"


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirLock:
  """Holds `workdir`/lock exclusively from `acquire()` until `release()` or exit.

  Use as a context manager. `enabled=False` (processes other than 0 of a multi-process
  run) makes it a no-op.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._enabled = enabled
    self._fd = None

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirLocked naming its holder."""
    if not self._enabled or self._fd is not None:
      return
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe(os.pread(fd, 4096, 0))
      os.close(fd)
      raise WorkdirLocked(
          f"workdir {os.path.dirname(self.path)} is in use by another run ({holder}). "
          f"Wait for it to end, stop it, or use another --workdir.") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # Nobody holds it: nothing to name.
      os.close(self._fd)  # Closing the only descriptor releases the flock.
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _describe(raw: bytes) -> str:
  try:
    h = json.loads(raw.decode())
    return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
  except (ValueError, KeyError, UnicodeDecodeError):
    return "holder unknown: the lock file names none yet"
