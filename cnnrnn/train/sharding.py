"""The device mesh and how arrays are laid out on it.

`config.mesh` is a sequence of (axis name, size) pairs; one size may be -1 (all remaining
devices). Batches are split over every axis (pure data parallelism when the mesh is
`(("data", -1),)`). Parameters, and optimizer state of the same shapes, are replicated,
except over an "fsdp" axis of size > 1, where each array's largest dimension divisible by
that size is split (ZeRO-3 style); XLA inserts the gathers.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
_MIN_SHARDED_SIZE = 2**14  # Smaller arrays are cheaper replicated.


def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> Mesh:
  """Builds the mesh from (name, size) pairs, e.g. (("data", -1),) or (("data", 2), ("fsdp", 4)).

  In a single process, explicit sizes may ask for fewer devices than are present (the
  first ones are used); across processes the mesh must cover every device.
  """
  devices = jax.devices() if devices is None else devices
  names = [a for a, _ in axes]
  sizes = [int(s) for _, s in axes]
  for name in names:
    if name not in AXES:
      raise ValueError(f"mesh axis {name!r} in config.mesh; allowed axis names: {AXES}")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={tuple(axes)}: at most one axis may have size -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh={tuple(axes)} does not divide {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) < len(devices) and jax.process_count() == 1:
    devices = devices[: int(np.prod(sizes))]  # One process: a smaller mesh uses the first devices.
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
        f"config.mesh={tuple(axes)} has {int(np.prod(sizes))} devices but {len(devices)} are present"
    )
  return Mesh(np.asarray(devices).reshape(sizes), tuple(names))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) dimension split over all mesh axes."""
  return NamedSharding(mesh, P(mesh.axis_names))


def batch_partitions(mesh: Mesh) -> int:
  return mesh.devices.size


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def array_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Replicated, or the largest divisible dimension split over "fsdp"."""
  fsdp = mesh.shape.get("fsdp", 1)
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < _MIN_SHARDED_SIZE:
    return replicated(mesh)
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def tree_shardings(mesh: Mesh, abstract_tree):
  """Shardings for every leaf of a tree of arrays / ShapeDtypeStructs."""
  return jax.tree.map(lambda x: array_sharding(mesh, x.shape), abstract_tree)


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
  """Assembles each process's local batch into global arrays sharded over the batch axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
