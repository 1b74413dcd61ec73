"""Pooling: adaptive average pooling against torch's AdaptiveAvgPool2d."""

import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import nn as cnn


@pytest.mark.parametrize("size,out", [(7, 7), (14, 7), (13, 6), (9, 7), (1, 6), (2, 7), (27, 6), (5, 3)])
def test_adaptive_avg_pool_matches_torch(size, out):
  torch = pytest.importorskip("torch")
  x = np.random.RandomState(0).randn(2, size, size + 1, 3).astype(np.float32)
  want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), out)
  got = cnn.adaptive_avg_pool(jnp.asarray(x), out)
  np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_adaptive_avg_pool_bins_by_hand():
  x = jnp.arange(5, dtype=jnp.float32).reshape(1, 5, 1, 1)
  y = cnn.adaptive_avg_pool(jnp.broadcast_to(x, (1, 5, 3, 1)), (3, 1))
  # Bins [0, 2), [1, 4), [3, 5).
  np.testing.assert_allclose(y[0, :, 0, 0], [0.5, 2.0, 3.5])


def test_adaptive_avg_pool_rejects_non_images():
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    cnn.adaptive_avg_pool(jnp.zeros((4, 4, 3)), 2)


def test_pool_modules_match_functions():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 8, 8, 3), jnp.float32)
  np.testing.assert_array_equal(cnn.MaxPool((3, 3), (2, 2)).apply({}, x),
                                cnn.max_pool(x, (3, 3), (2, 2)))
  np.testing.assert_array_equal(cnn.AvgPool((2, 2)).apply({}, x), cnn.avg_pool(x, (2, 2)))
  np.testing.assert_array_equal(cnn.AdaptiveAvgPool(4).apply({}, x), cnn.avg_pool(x, (2, 2)))
