"""Matrix products as a primitive that runs on a native kernel where XLA:CPU's is slower.

`matmul_p(a, b, transpose_a, transpose_b)`: for every index of the leading (batch) axes,
op(a) @ op(b), where op transposes the last two axes when asked; a and b have the same
rank and the same leading axes. Its XLA reference is `lax.dot_general`. The native kernel
(`cnnrnn_matmul`, which reads both operands in place) takes two kinds of product; the
others lower to XLA's dot, which XLA:CPU gives its matmul library (YNNPACK):

- the product with the left operand transposed, a^T b. Reverse mode turns every forward
  product into two, and one of them is always of this form: the weight gradient X^T dY of
  a dense layer, and the attention's key and value gradients dS^T Q and P^T dO. XLA:CPU
  either copies the left operand into a transposed layout before giving such a product to
  YNNPACK, or leaves it to Eigen; the native kernel reads it in place
  (experiments/benchmarks/README.md, "Products with a transposed left operand on a native
  kernel", has the measurements).
- batched products (the attention's Q K^T, P V, dO V^T and dS K, over [batch, heads]):
  YNNPACK runs a batched product on one thread (ViT-Ti's P V, [48, 197, 197] x
  [48, 197, 64]: one core busy, the other idle unless XLA finds other work for it), while
  the kernel spreads the batch over XLA's threads (same README, "The attention's batched
  products on one thread").

The rules close over the primitive, so `grad`, `jvp`, Hessians and higher orders stay on
it: it is bilinear (`ad.defbilinear`), and the transpose of each form in each operand is
another form (for C = op_a(A) op_b(B): dA is ct op_b(B)^T or, with transpose_a,
op_b(B) ct^T; dB is op_a(A)^T ct or, with transpose_b, ct^T op_a(A)). Under `vmap`, two
batched operands add a leading batch axis; one batched operand runs the vmapped reference.

The seams (what `cnnrnn.accel` substitutes while a mode is active): `dot_general`, the
hook given to `flax.linen.Dense` and `flax.linen.DenseGeneral`, and `einsum`, the einsum
that `cnnrnn.nn.MultiHeadAttention` gets for its two attention products.
"""

from collections.abc import Callable
import math
import re

import jax
from jax import lax
from jax.interpreters import ad
from jax.interpreters import batching
import jax.numpy as jnp

from cnnrnn.accel import native
from cnnrnn.accel import primitives


def reference_matmul(a, b, *, transpose_a: bool, transpose_b: bool):
  """`matmul_p` in XLA's operations."""
  batch = tuple(range(a.ndim - 2))
  contract_a = a.ndim - 2 if transpose_a else a.ndim - 1
  contract_b = b.ndim - 1 if transpose_b else b.ndim - 2
  # dot_general orders the result as batch, a's free axis, b's free axis: op(a) @ op(b).
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), (batch, batch)))


# Where XLA's product is as fast or faster, it stays XLA's (measured on a 2-core AVX-512
# machine; experiments/benchmarks/README.md, "Products with a transposed left operand"). The
# AVX2 build keeps the same limits, not re-measured with it: on a 2-core AVX2 machine under
# load its kernel took 0.8-1.0x of XLA's time on the ViT's dense weight gradients and
# 0.1-1.2x on the attention's dK, dV (same README, "AVX2 CPUs"):
# - an unbatched a^T b summing fewer rows than _MIN_ROWS: the per-step weight gradients of a
#   recurrent cell (rows = the batch; n = 32-128 rows, K x M from 64 x 192 to 650 x 2600:
#   0.9-1.0x of XLA's time);
# - a result c larger than _MAX_RESULT_BYTES (per batch index): the kernel keeps the part of
#   c that a worker computes in its core's L2 while it reads a block of rows of a and b
#   once; beyond that it reads a again for every column block of 64 (16 with AVX2)
#   columns (the attention seq2seq's encoder projection, [3840, 256]^T [3840, 1536]:
#   17.0 ms against XLA's 15.6 ms);
# - rows of more than _MAX_K floats in the left operand: the kernel reads a few floats of
#   each row at a time, one row after the other, and once a row spans more than a 4 KB
#   page every read is on a new page ([3840, 1792]^T [3840, 512]: 43 ms against 37 ms).
# The layers applied to every token of a ViT or a Transformer (K x M up to 768 x 192) and
# the attention's batched products gain 1.1-2.5x.
# The other forms go to the kernel only when batched with at least _MIN_BATCHED_WORK
# multiply-adds (below that the kernel runs on one thread too, and XLA's product can fuse
# with its neighbours, as the softmax after Q K^T), within the same limits on a's rows and
# c. Unbatched, YNNPACK spreads them over the threads and is faster per core than the
# kernel.
_MIN_ROWS = 256
_MAX_RESULT_BYTES = 1 << 20
_MAX_K = 1024
_MIN_BATCHED_WORK = 1 << 20  # multiply-adds


def _kernel_matmul(a, b, *, transpose_a, transpose_b):
  k, n = (a.shape[-1], a.shape[-2]) if transpose_a else a.shape[-2:]  # op(a): [K, N]
  m = b.shape[-2] if transpose_b else b.shape[-1]  # op(b): [N, M]
  batch = math.prod(a.shape[:-2])
  if transpose_a:  # The weight gradients and dK, dV.
    use = (not transpose_b and not (a.ndim == 2 and n < _MIN_ROWS) and k <= _MAX_K
           and k * m * 4 <= _MAX_RESULT_BYTES)
  else:  # The attention's other products: batched, and enough work to share.
    use = (batch >= 2 and batch * k * n * m >= _MIN_BATCHED_WORK and a.shape[-1] <= _MAX_K
           and k * m * 4 <= _MAX_RESULT_BYTES)
  if not use:
    return reference_matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
  out = jax.ShapeDtypeStruct((*a.shape[:-2], k, m), jnp.float32)
  return native.ffi_call("cnnrnn_matmul", out, a, b, transpose_a=transpose_a,
                         transpose_b=transpose_b)


matmul_p = primitives.define("cnnrnn_matmul", reference_matmul, _kernel_matmul)


def matmul(a: jax.Array, b: jax.Array, transpose_a: bool = False,
           transpose_b: bool = False) -> jax.Array:
  """op(a) @ op(b) over the leading axes, through `matmul_p`.

  Args:
    a: [..., M, K] ([..., K, M] with `transpose_a`).
    b: [..., K, N] ([..., N, K] with `transpose_b`), the same leading axes as `a`.
    transpose_a, transpose_b: use the operand's last two axes swapped.

  Returns:
    [..., M, N], as `jnp.matmul` of the (swapped) operands, to float32 rounding.
  """
  if a.ndim != b.ndim or a.ndim < 2 or a.shape[:-2] != b.shape[:-2]:
    raise ValueError(f"matmul needs operands of one rank >= 2 with the same leading axes, "
                     f"got {a.shape} and {b.shape}")
  k_a = a.shape[-2] if transpose_a else a.shape[-1]
  k_b = b.shape[-1] if transpose_b else b.shape[-2]
  if k_a != k_b:
    raise ValueError(f"matmul: contracted sizes differ ({k_a} and {k_b}) for shapes "
                     f"{a.shape} and {b.shape} (transpose_a={transpose_a}, "
                     f"transpose_b={transpose_b})")
  return matmul_p.bind(a, b, transpose_a=bool(transpose_a), transpose_b=bool(transpose_b))


def _transpose_a(ct, a, b, *, transpose_a, transpose_b):
  del a
  if transpose_a:  # d(A^T) = ct op_b(B)^T, so dA = op_b(B) ct^T.
    return matmul_p.bind(b, ct, transpose_a=transpose_b, transpose_b=True)
  return matmul_p.bind(ct, b, transpose_a=False, transpose_b=not transpose_b)


def _transpose_b(ct, a, b, *, transpose_a, transpose_b):
  del b
  if transpose_b:  # d(B^T) = op_a(A)^T ct, so dB = ct^T op_a(A).
    return matmul_p.bind(ct, a, transpose_a=True, transpose_b=transpose_a)
  return matmul_p.bind(a, ct, transpose_a=not transpose_a, transpose_b=False)


ad.defbilinear(matmul_p, _transpose_a, _transpose_b)


def _batch(args, dims, *, transpose_a, transpose_b):
  a, b = args
  da, db = dims
  if da is not None and db is not None:  # One more leading axis on both.
    a, b = jnp.moveaxis(a, da, 0), jnp.moveaxis(b, db, 0)
    return matmul_p.bind(a, b, transpose_a=transpose_a, transpose_b=transpose_b), 0
  fn = lambda a, b: reference_matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
  return jax.vmap(fn, in_axes=dims)(a, b), 0


batching.primitive_batchers[matmul_p] = _batch


def _plain(*arrays: jax.Array) -> bool:
  """float32 operands without explicit sharding in their types: what `matmul_p` takes."""
  return (all(a.dtype == jnp.float32 for a in arrays)
          and not primitives.explicitly_sharded(*arrays))


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None, **kwargs) -> jax.Array:
  """`lax.dot_general`, through `matmul_p` for a dense layer's product.

  That is: float32 operands without explicit sharding, no batch axes, the contracted axes
  of `lhs` its last ones and those of `rhs` its first ones, in order (what
  `flax.linen.Dense` and `flax.linen.DenseGeneral` with trailing `axis` compute), no
  `precision` and no other result type. The operands are reshaped to [rows, K] and
  [K, features] and multiplied; anything else is passed to `lax.dot_general` unchanged.
  This is the `dot_general` hook that `cnnrnn.accel` gives Flax's dense layers.
  """
  (contract_l, contract_r), (batch_l, batch_r) = dimension_numbers
  n = len(contract_l)
  if (not batch_l and not batch_r and precision is None and not kwargs
      and preferred_element_type in (None, jnp.float32) and _plain(lhs, rhs)
      and tuple(contract_l) == tuple(range(lhs.ndim - n, lhs.ndim))
      and tuple(contract_r) == tuple(range(n))):
    free_l, free_r = lhs.shape[:lhs.ndim - n], rhs.shape[n:]
    k = math.prod(rhs.shape[:n])
    out = matmul(lhs.reshape(-1, k), rhs.reshape(k, -1))
    return out.reshape(*free_l, *free_r)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type, **kwargs)


_EINSUM = re.compile(r"^([a-zA-Z]*)([a-zA-Z])([a-zA-Z]),([a-zA-Z]*)([a-zA-Z])([a-zA-Z])"
                     r"->([a-zA-Z]*)([a-zA-Z])([a-zA-Z])$")


def _einsum_form(subscripts: str) -> tuple[bool, bool] | None:
  """(transpose_a, transpose_b) if `subscripts` is a batched matrix product, else None."""
  m = _EINSUM.match(subscripts.replace(" ", ""))
  if m is None:
    return None
  batch_a, a1, a2, batch_b, b1, b2, batch_c, c1, c2 = m.groups()
  letters = batch_a + a1 + a2 + b1 + b2
  if not (batch_a == batch_b == batch_c) or len(set(batch_a + a1 + a2)) != len(batch_a) + 2:
    return None
  if len(set(letters)) != len(batch_a) + 3:  # One contracted letter, two free ones.
    return None
  for transpose_a, (row, ka) in ((False, (a1, a2)), (True, (a2, a1))):
    for transpose_b, (kb, col) in ((False, (b1, b2)), (True, (b2, b1))):
      if ka == kb and (row, col) == (c1, c2) and ka not in (c1, c2):
        return transpose_a, transpose_b
  return None


def einsum(subscripts: str, a: jax.Array, b: jax.Array, **kwargs) -> jax.Array:
  """`jnp.einsum(subscripts, a, b)`, through `matmul_p` for a batched matrix product.

  That is: subscripts of the form "...ik,...kj->...ij" with either operand's last two
  letters swapped (the same leading letters, in the same order, on all three), float32
  operands of the same leading shape without explicit sharding, and no keyword arguments.
  Anything else is `jnp.einsum`. This is the einsum that `cnnrnn.accel` gives
  `cnnrnn.nn.MultiHeadAttention` for its two attention products.
  """
  form = _einsum_form(subscripts)
  if (form is None or kwargs or a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2]
      or not _plain(a, b)):
    return jnp.einsum(subscripts, a, b, **kwargs)
  return matmul(a, b, *form)


def einsum_cls() -> Callable[..., jax.Array]:
  """The einsum factory for `MultiHeadAttention`'s `*_einsum_cls` fields: `einsum`."""
  return einsum

