import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import tasks


def test_mse_with_mask_and_shape_check():
  task = tasks.create("regression")
  outputs = jnp.array([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])
  batch = {"targets": jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), "mask": jnp.array([1.0, 1.0, 0.0])}
  loss, m = task.loss_and_metrics(outputs, batch)
  # Per-example means: (0 + 4) / 2 = 2 and (1 + 1) / 2 = 1; the third is padding.
  np.testing.assert_allclose([loss, m["mse"], m["count"]], [1.5, 3.0, 2.0])
  with pytest.raises(ValueError, match="does not match targets"):
    task.loss_and_metrics(outputs[:, :1], batch)


def test_task_fields_are_checked():
  with pytest.raises(ValueError, match=r"has no fields \['num_classes'\]"):
    tasks.create("regression", num_classes=3)
