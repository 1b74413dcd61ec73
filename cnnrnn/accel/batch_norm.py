"""BatchNorm in training mode with its statistics on the native kernels: `batch_norm_train`.

XLA:CPU materialises x**2 and reduces through reduce-window fusions (~90 ms of a ResNet-20
step); the native `cnnrnn_channel_sums` takes BatchNorm's per-channel sums in one pass,
accumulated in float32 blocks, then float64, about the first row (so a large mean does not
cancel the variance). Three primitives, each defined by XLA operations (primitives.py):

- `moments_p(x)`: x [N, C] -> [2, C], the mean and the biased variance of each column.
- `channel_sums_p(u, v, shift)`: [2, C] = (sum_r u, sum_r u * (v - shift)); linear in u.
- `affine_p(ab, v, shift)`: [N, C] = ab[0] + ab[1] * (v - shift); linear in ab.

`channel_sums_p` and `affine_p` are each other's transposes, so the reverse pass of the
normalisation takes its sums (sum dy, sum dy * (x - mean)) in one kernel call, and
everything else is elementwise. `batch_norm_train` is a `custom_jvp` whose tangent is linear
in the tangents and built from these primitives: `jvp`, `grad` and Hessians all work (the
second-order terms in v and shift are XLA operations). Under `vmap` they run the vmapped
XLA reference.
"""

import functools

import jax
from jax import lax
from jax.interpreters import ad
import jax.numpy as jnp

from cnnrnn.accel import native
from cnnrnn.accel import primitives


def _reference_moments(x):
  mean = x.mean(0)
  return jnp.stack([mean, lax.square(x - mean[None]).mean(0)])


def _reference_channel_sums(u, v, shift):
  return jnp.stack([u.sum(0), (u * (v - shift[None])).sum(0)])


def _reference_affine(ab, v, shift):
  return ab[0][None] + ab[1][None] * (v - shift[None])


def _kernel_moments(x):
  out = jax.ShapeDtypeStruct((2, x.shape[1]), jnp.float32)
  return native.ffi_call("cnnrnn_channel_sums", out, x, x, jnp.zeros((x.shape[1],), x.dtype),
                         moments=True)


def _kernel_channel_sums(u, v, shift):
  out = jax.ShapeDtypeStruct((2, u.shape[1]), jnp.float32)
  return native.ffi_call("cnnrnn_channel_sums", out, u, v, shift, moments=False)


moments_p = primitives.define("cnnrnn_moments", _reference_moments, _kernel_moments)
channel_sums_p = primitives.define("cnnrnn_channel_sums", _reference_channel_sums,
                                   _kernel_channel_sums)
affine_p = primitives.define("cnnrnn_channel_affine", _reference_affine, None)
for _prim, _reference in ((moments_p, _reference_moments),
                          (channel_sums_p, _reference_channel_sums),
                          (affine_p, _reference_affine)):
  primitives.batch_by_vmap(_prim, _reference)


def _moments_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  m = moments_p.bind(x)
  if type(dx) is ad.Zero:
    return m, ad.Zero.from_primal_value(m)
  # d mean = sum(dx) / n; d var = 2 sum(dx (x - mean)) / n (the sum of x - mean is zero).
  s = channel_sums_p.bind(dx, x, m[0])
  return m, s * jnp.array([[1.0], [2.0]], s.dtype) / x.shape[0]


def _channel_sums_jvp(primals, tangents):
  (u, v, shift), (du, dv, dshift) = primals, tangents
  out = channel_sums_p.bind(u, v, shift)
  dv, dshift = ad.instantiate_zeros(dv), ad.instantiate_zeros(dshift)
  second = (u * dv).sum(0) - u.sum(0) * dshift
  t = jnp.stack([jnp.zeros_like(second), second])
  if type(du) is not ad.Zero:
    t = t + channel_sums_p.bind(du, v, shift)
  return out, t


def _affine_jvp(primals, tangents):
  (ab, v, shift), (dab, dv, dshift) = primals, tangents
  out = affine_p.bind(ab, v, shift)
  t = ab[1][None] * (ad.instantiate_zeros(dv) - ad.instantiate_zeros(dshift)[None])
  if type(dab) is not ad.Zero:
    t = t + affine_p.bind(dab, v, shift)
  return out, t


def _channel_sums_transpose(ct, u, v, shift):
  if ad.is_undefined_primal(v) or ad.is_undefined_primal(shift):
    raise ValueError("channel_sums_p is linear in its first operand only")
  if type(ct) is ad.Zero:
    return ad.Zero(u.aval), None, None
  return affine_p.bind(ct, v, shift), None, None


def _affine_transpose(ct, ab, v, shift):
  if ad.is_undefined_primal(v) or ad.is_undefined_primal(shift):
    raise ValueError("affine_p is linear in its first operand only")
  if type(ct) is ad.Zero:
    return ad.Zero(ab.aval), None, None
  return channel_sums_p.bind(ct, v, shift), None, None


ad.primitive_jvps[moments_p] = _moments_jvp
ad.primitive_jvps[channel_sums_p] = _channel_sums_jvp
ad.primitive_jvps[affine_p] = _affine_jvp
ad.primitive_transposes[channel_sums_p] = _channel_sums_transpose
ad.primitive_transposes[affine_p] = _affine_transpose


def _per_channel(x, *vectors):
  """Each [C] vector reshaped to broadcast against x [..., C] (explicit rank promotion)."""
  return [v.reshape((1,) * (x.ndim - 1) + (-1,)) for v in vectors]


def _forward(x, scale, bias, epsilon):
  c = x.shape[-1]
  mean, var = moments_p.bind(x.reshape(-1, c))
  inv = lax.rsqrt(var + epsilon)
  m, mul, b = _per_channel(x, mean, inv * scale, bias)
  return (x - m) * mul + b, mean, var, inv


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """BatchNorm with batch statistics over all axes but the last.

  Args:
    x: [..., C] float32.
    scale, bias: [C] float32.
    epsilon: added to the variance.

  Returns:
    (y, mean, var): y = (x - mean) * rsqrt(var + epsilon) * scale + bias, with the batch
    mean and biased variance ([C] each), as `flax.linen.BatchNorm` in training mode.
  """
  return _forward(x, scale, bias, epsilon)[:3]


@batch_norm_train.defjvp
def _batch_norm_jvp(epsilon, primals, tangents):
  x, scale, bias = primals
  dx, dscale, dbias = tangents
  y, mean, var, inv = _forward(x, scale, bias, epsilon)
  c = x.shape[-1]
  n = x.size // c
  x2 = x.reshape(-1, c)
  sum_dx, sum_dx_xc = channel_sums_p.bind(dx.reshape(-1, c), x2, mean)
  dmean, dvar = sum_dx / n, 2.0 * sum_dx_xc / n
  dinv = -0.5 * inv ** 3 * dvar
  mul = inv * scale
  # dy = (dx - dmean) * mul + (x - mean) * (dinv * scale + inv * dscale) + dbias, with the
  # per-channel terms in one affine_p (whose transpose is one kernel call).
  ab = jnp.stack([dbias - dmean * mul, dinv * scale + inv * dscale])
  (mul_b,) = _per_channel(x, mul)
  dy = dx * mul_b + affine_p.bind(ab, x2, mean).reshape(x.shape)
  return (y, mean, var), (dy, dmean, dvar)
