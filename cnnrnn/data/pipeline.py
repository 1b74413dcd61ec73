"""Grain pipelines: a checkpointable, per-process-sharded training stream and an
evaluation pass that sees every example exactly once.

Each process reads only its own slice (`source[process_index::process_count]`) and
produces its share of every global batch; the trainer assembles the global array with
`jax.make_array_from_process_local_data`.
"""

from collections.abc import Callable, Iterator
import math

import grain
import numpy as np

BatchFn = Callable[..., dict]  # (batch, rng=None) -> batch


def _local_batch_size(global_batch_size: int, process_count: int, field: str) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f"{field}={global_batch_size} does not divide over {process_count} processes"
    )
  return global_batch_size // process_count


def train_dataset(
    source,
    *,
    global_batch_size: int,
    seed: int,
    preprocess: BatchFn,
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 2,
) -> grain.IterDataset:
  """An endless stream of this process's training batches.

  The order is a fresh permutation of this process's shard every epoch, determined by
  `seed`; augmentation randomness is determined by `seed` and the batch index. Iterate
  with `iter(...)`; the iterator's `get_state()`/`set_state()` make resumption exact.
  """
  local = _local_batch_size(global_batch_size, process_count, "batch_size")
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) < local:
    raise ValueError(f"batch_size={global_batch_size} exceeds the training split ({len(source)})")
  ds = ds.shuffle(seed=seed).repeat()
  ds = ds.batch(local, drop_remainder=True)
  ds = ds.random_map(lambda batch, rng: preprocess(batch, rng), seed=seed + 1)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4))


def eval_batches(
    source,
    *,
    global_batch_size: int,
    preprocess: BatchFn,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
  """This process's evaluation batches; every example appears in exactly one of them.

  Batches have a fixed size (one compilation): the last ones are padded with copies of
  an example and carry `mask` 0 there (1 on real examples). Every process yields the
  same number of batches, as the sharded step needs.
  """
  local = _local_batch_size(global_batch_size, process_count, "eval_batch_size")
  shard = grain.MapDataset.source(source)[process_index::process_count]
  longest_shard = math.ceil(len(source) / process_count)
  num_batches = math.ceil(longest_shard / local)
  batched = shard.batch(local, drop_remainder=False)
  for i in range(num_batches):
    if i < len(batched):
      batch = batched[i]
    else:  # This shard ran out before the longest one: an all-padding batch.
      batch = {k: v[:1] for k, v in batched[0].items()}
    n = len(next(iter(batch.values())))
    mask = np.zeros(local, np.float32)
    mask[: n if i < len(batched) else 0] = 1.0
    if n < local:
      batch = {k: np.concatenate([v, np.repeat(v[:1], local - n, axis=0)]) for k, v in batch.items()}
    batch = preprocess(batch)
    batch["mask"] = mask
    yield batch
