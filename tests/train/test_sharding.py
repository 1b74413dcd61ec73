import jax
import pytest

from cnnrnn.train import sharding


def test_mesh_from_config_axes():
  mesh = sharding.make_mesh((("data", -1),))
  assert dict(mesh.shape) == {"data": 8}
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert sharding.make_mesh((("data", 1),)).devices.size == 1  # One process: a sub-mesh.
  with pytest.raises(ValueError, match="at most one axis may have size -1"):
    sharding.make_mesh((("data", -1), ("fsdp", -1)))
  with pytest.raises(ValueError, match="does not divide 8 devices"):
    sharding.make_mesh((("data", -1), ("fsdp", 3)))
  with pytest.raises(ValueError, match="has 16 devices but 8 are present"):
    sharding.make_mesh((("data", 16),))


def test_fsdp_shards_the_largest_divisible_dimension():
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
  assert sharding.array_sharding(mesh, (256, 512)).spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert sharding.array_sharding(mesh, (10, 10)).spec == jax.sharding.PartitionSpec()  # Small.
  assert sharding.array_sharding(mesh, (129, 255)).spec == jax.sharding.PartitionSpec()  # Indivisible.
  assert sharding.batch_sharding(mesh).spec == jax.sharding.PartitionSpec(("data", "fsdp"))
