"""Where metrics go: metrics.jsonl, TensorBoard event files (no TensorFlow), a progress bar."""

import json
import math
import os
import sys
import time

import numpy as np


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch where PyTorch is not loaded yet.

  tensorboardX imports torch whenever it is installed (about 2 s), only to accept torch
  tensors as values; the writer is given Python floats, so the import is skipped by
  marking torch absent while tensorboardX loads (and restored right after).
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles.
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Appends one JSON object per call to `workdir`/metrics.jsonl and mirrors scalars to
  TensorBoard (`workdir`/tensorboard). Only process 0 writes; other processes no-op."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self._enabled:
      return
    record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in record.items():
      if k not in ("step", "split") and isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(f"{split}/{k}", v, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """A tqdm bar over training steps showing loss, throughput and the ETA."""

  def __init__(self, total: int, initial: int, enabled: bool = True):
    self._bar = None
    if enabled:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                       desc="train", smoothing=0.1)
    self._last = time.perf_counter()

  def update(self, step: int, **postfix) -> None:
    if self._bar is None:
      return
    if postfix:
      self._bar.set_postfix(
          {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()}, refresh=False)
    self._bar.update(step - self._bar.n)  # Redraws at most every `mininterval` seconds.

  def write(self, message: str) -> None:
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
