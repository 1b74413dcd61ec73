"""BatchNorm with the variables and results of `flax.linen.BatchNorm`."""

from typing import Any

import flax.linen as nn
from flax.linen import initializers
import jax
from jax import lax
import jax.numpy as jnp


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last (Ioffe & Szegedy 2015).

  A drop-in for `flax.linen.BatchNorm` with `axis=-1`: the same variables (`params/scale`,
  `params/bias`, `batch_stats/mean`, `batch_stats/var`), the same attributes for those it
  has, and the same results: the running statistics take the biased batch variance,
  `mean(x**2) - mean(x)**2`, and are not updated during `init`. Training-mode
  normalisation is its own method, `batch_normalize`, so that it can be replaced from
  outside the model with `flax.linen.intercept_methods` (`cnnrnn.accel` does).

  Attributes:
    use_running_average: normalise with the stored statistics (evaluation) instead of the
      batch's; may also be passed to `__call__`.
    momentum: running = momentum * running + (1 - momentum) * batch.
    epsilon: added to the variance.
    dtype: output dtype (default: that of x and the parameters combined).
    param_dtype: dtype of scale and bias.
    use_bias, use_scale: learn a per-channel bias / scale.
    bias_init, scale_init: their initialisers.
    axis_name: a mapped axis (pmap / shard_map) to average the statistics over.
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = initializers.zeros
  scale_init: Any = initializers.ones
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Args: x: [..., C]. Returns: x normalised per channel, same shape."""
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = (self.param("scale", self.scale_init, (c,), self.param_dtype) if self.use_scale
             else jnp.ones((c,), self.param_dtype))
    bias = (self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias
            else jnp.zeros((c,), self.param_dtype))
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    if use_running_average:
      y = _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
    else:
      y, mean, var = self.batch_normalize(x, scale, bias)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return jnp.asarray(y, dtype)

  def batch_normalize(self, x: jax.Array, scale: jax.Array,
                      bias: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalises x with its own statistics (training mode).

    Args:
      x: [..., C].
      scale, bias: [C].

    Returns:
      (y, mean, var): y like x, and the batch mean and biased variance [C] (averaged over
      `axis_name` when it is set, except during `init`).
    """
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean, mean2 = xf.mean(axes), lax.square(xf).mean(axes)
    axis_name = None if self.is_initializing() else self.axis_name
    if axis_name is not None:
      mean, mean2 = lax.pmean((mean, mean2), axis_name)
    var = jnp.maximum(0.0, mean2 - lax.square(mean))
    return _normalize(x, mean, var, scale, bias, self.epsilon), mean, var


def _normalize(x, mean, var, scale, bias, epsilon):
  shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
  return ((x - mean.reshape(shape)) * (lax.rsqrt(var + epsilon) * scale).reshape(shape)
          + bias.reshape(shape))
