"""The matrix-product primitive: the native kernel equals XLA's in every form, every form's
rules close over the primitive, and the dense and attention seams substitute it only where
it computes the same thing."""

import re

import flax.linen as nn
import jax
from jax import export
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import accel
from cnnrnn import nn as cnn
from cnnrnn.accel import native
from cnnrnn.accel import products
from cnnrnn.train import sharding

native_only = pytest.mark.skipif(not accel.available()[0],
                                 reason=f"native kernels unavailable: {accel.available()[1]}")
FORMS = [(False, False), (False, True), (True, False), (True, True)]


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _op(x, transpose):
  return jnp.swapaxes(x, -1, -2) if transpose else x


def _operands(batch, m, k, n, transpose_a, transpose_b, seed=0):
  a = _normal(seed, (*batch, k, m) if transpose_a else (*batch, m, k))
  b = _normal(seed + 1, (*batch, n, k) if transpose_b else (*batch, k, n))
  return a, b


# (batch, n, k, m): op(a) [*batch, k, n] times op(b) [*batch, n, m].
KERNEL_SHAPES = [
    ((), 700, 37, 100),       # rows over the 256-row block; a masked tail of 4 columns
    ((), 300, 40, 384),       # six column blocks: split over the workers
    ((), 300, 40, 192),       # three column blocks: the rows of c split over the workers
    ((), 700, 768, 48),       # long rows of a^T: passes of 80 rows, summed into c
    ((2,), 197, 61, 64),      # rows spanning over 32 KB: b's columns copied at 8 lanes
    ((1,), 9, 130, 16),       # one column block
    ((3, 2), 65, 65, 32),     # the attention's products: batched
    ((4,), 32, 65, 65),       # Q K^T of a small ViT: a one-column tail at 16 lanes
    ((1,), 5, 7, 3),          # below the parallel threshold: one thread
    ((2,), 0, 3, 20),         # an empty sum: zeros
]


def _kernel(a, b, transpose_a, transpose_b, k, m):
  out = jax.ShapeDtypeStruct((*a.shape[:-2], k, m), jnp.float32)
  return native.ffi_call("cnnrnn_matmul", out, a, b, transpose_a=transpose_a,
                         transpose_b=transpose_b)


@native_only
@pytest.mark.parametrize("transpose_a,transpose_b", FORMS)
@pytest.mark.parametrize("batch,n,k,m", KERNEL_SHAPES)
def test_the_kernel_equals_xla_in_every_form(batch, n, k, m, transpose_a, transpose_b):
  a, b = _operands(batch, k, n, m, transpose_a, transpose_b)
  fn = jax.jit(lambda a, b: _kernel(a, b, transpose_a, transpose_b, k, m))
  got = fn(a, b)
  want = jnp.matmul(_op(a, transpose_a), _op(b, transpose_b), precision="highest")
  assert got.shape == want.shape == (*batch, k, m)
  if n == 0:
    np.testing.assert_array_equal(got, 0.0)
  else:
    assert _rel(got, want) < 1e-5
  np.testing.assert_array_equal(fn(a, b), got)  # Deterministic, whatever the threads did.


@native_only
@pytest.mark.parametrize("batch,n,k,m", [s for s in KERNEL_SHAPES if s[1] > 0])
def test_transposed_left_product_runs_the_kernel_and_equals_xla(batch, n, k, m):
  a, b = _normal(0, (*batch, n, k)), _normal(1, (*batch, n, m))
  fn = jax.jit(lambda a, b: products.matmul(a, b, transpose_a=True))
  assert "cnnrnn_matmul" in fn.lower(a, b).as_text()
  want = jnp.einsum("...nk,...nm->...km", a, b, precision="highest")
  assert _rel(fn(a, b), want) < 1e-5


@native_only
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("batch,n,k,m,kernel", [
    ((48,), 64, 197, 197, True),   # ViT-Ti's Q K^T (with transpose_b) and P V
    ((16, 3), 197, 197, 64, True),
    ((2,), 256, 256, 64, True),
    ((1,), 256, 256, 64, False),   # unbatched: XLA's library spreads it over the threads
    ((8,), 16, 16, 16, False),     # too little work to share
])
def test_batched_products_run_the_kernel_where_there_is_work_to_share(batch, n, k, m, kernel,
                                                                      transpose_b):
  a, b = _operands(batch, k, n, m, False, transpose_b)
  fn = jax.jit(lambda a, b: products.matmul(a, b, transpose_b=transpose_b))
  assert ("cnnrnn_matmul" in fn.lower(a, b).as_text()) == kernel
  want = jnp.matmul(a, _op(b, transpose_b), precision="highest")
  assert _rel(fn(a, b), want) < 1e-5


@native_only
def test_the_kernel_on_a_result_beyond_l2():
  # A worker's part of c over 640 KB: column blocks outermost (the seam gives XLA products
  # of such size; the kernel still computes them).
  a, b = _normal(0, (600, 1000)), _normal(1, (600, 640))
  got = jax.jit(lambda a, b: _kernel(a, b, True, False, 1000, 640))(a, b)
  assert _rel(got, jnp.einsum("nk,nm->km", a, b, precision="highest")) < 1e-5


@pytest.mark.parametrize("n,k,m", [
    (32, 64, 24),     # a recurrent cell's per-step weight gradient (rows = the batch)
    (300, 1100, 24),  # rows longer than a 4 KB page
    pytest.param(300, 256, 1100, id="a result over 1 MB"),
])
def test_where_xla_is_as_fast_the_product_stays_xla(n, k, m):
  a, b = _normal(0, (n, k)), _normal(1, (n, m))
  fn = jax.jit(lambda a, b: products.matmul(a, b, transpose_a=True))
  assert "cnnrnn_matmul" not in fn.lower(a, b).as_text()
  assert _rel(fn(a, b), a.T @ b) < 1e-5


@pytest.mark.parametrize("transpose_a,transpose_b", FORMS)
def test_every_form_and_its_derivatives_equal_xla(transpose_a, transpose_b):
  a, b = _operands((2,), 4, 6, 3, transpose_a, transpose_b)
  mine = lambda a, b: products.matmul(a, b, transpose_a, transpose_b)
  ref = lambda a, b: _op(a, transpose_a) @ _op(b, transpose_b)
  loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)) * jnp.arange(24.0).reshape(2, 4, 3))
  assert _rel(jax.jit(mine)(a, b), ref(a, b)) < 1e-6
  for want, got in zip(jax.grad(loss(ref), (0, 1))(a, b),
                       jax.jit(jax.grad(loss(mine), (0, 1)))(a, b)):
    assert _rel(got, want) < 1e-5
  # Second order (forward over reverse), forward mode, and the transposes' own transposes
  # (reverse over reverse) stay on the primitive.
  tangents = lambda a, b: (b.sum() * a, a.sum() * b)
  hvp = lambda f: jax.jit(lambda a, b: jax.jvp(jax.grad(loss(f), (0, 1)), (a, b),
                                               tangents(a, b)))
  for want, got in zip(jax.tree.leaves(hvp(ref)(a, b)), jax.tree.leaves(hvp(mine)(a, b))):
    assert _rel(got, want) < 1e-5
  assert _rel(jax.jit(jax.hessian(loss(mine)))(a, b), jax.hessian(loss(ref))(a, b)) < 1e-5
  jaxpr = str(jax.make_jaxpr(hvp(mine))(a, b))
  assert "dot_general" not in jaxpr and "cnnrnn_matmul" in jaxpr


def test_vmap_of_both_operands_stays_on_the_primitive_and_of_one_runs_the_reference():
  a, b = _operands((2,), 4, 6, 3, False, False)
  both = jax.vmap(lambda a, b: products.matmul(a, b), (1, 2), 0)
  stacked = jnp.stack([a, -a], 1), jnp.stack([b, 2 * b], 2)
  assert "cnnrnn_matmul" in str(jax.make_jaxpr(both)(*stacked))
  out = jax.jit(both)(*stacked)
  assert _rel(out[1], -2 * (a @ b)) < 1e-6
  one = jax.jit(jax.vmap(lambda a: products.matmul(a, b[0]), 0))(a)
  assert _rel(one, a @ b[0]) < 1e-6
  # Per-example weight gradients of a dense layer: vmap of grad.
  w = _normal(3, (6, 5))
  dense = lambda w, x: jnp.sum(jnp.tanh(products.dot_general(x, w, (((1,), (0,)), ((), ())))))
  per_example = jax.jit(jax.vmap(jax.grad(dense), (None, 0)))
  want = jax.vmap(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))), (None, 0))(w, a)
  assert _rel(per_example(w, a), want) < 1e-5


def test_bad_operands_fail_with_their_shapes():
  with pytest.raises(ValueError, match=r"contracted sizes differ \(3 and 4\)"):
    products.matmul(jnp.ones((2, 3)), jnp.ones((4, 5)))
  with pytest.raises(ValueError, match=r"same leading axes, got \(2, 2, 3\) and \(3, 3, 5\)"):
    products.matmul(jnp.ones((2, 2, 3)), jnp.ones((3, 3, 5)))


@pytest.mark.parametrize("dims,shapes,primitive_expected", [
    ((((2,), (0,)), ((), ())), ((2, 3, 4), (4, 5)), True),            # Dense
    ((((2,), (0,)), ((), ())), ((2, 3, 4), (4, 3, 2, 5)), True),      # DenseGeneral features
    ((((1, 2), (0, 1)), ((), ())), ((2, 3, 4), (3, 4, 5)), True),     # trailing axes
    ((((1, 3), (0, 1)), ((), ())), ((2, 3, 6, 4), (3, 4, 5)), False),  # not trailing
    ((((2,), (1,)), ((0,), (0,))), ((2, 3, 4), (2, 4, 5)), False),     # batch axes
    ((((0,), (0,)), ((), ())), ((4, 3), (4, 5)), False),               # not the last axis
])
def test_dot_general_dispatch(dims, shapes, primitive_expected):
  lhs, rhs = _normal(0, shapes[0]), _normal(1, shapes[1])
  fn = lambda l, r: products.dot_general(l, r, dims)
  assert ("cnnrnn_matmul" in str(jax.make_jaxpr(fn)(lhs, rhs))) == primitive_expected
  assert _rel(jax.jit(fn)(lhs, rhs), lax.dot_general(lhs, rhs, dims)) < 1e-6
  # Other dtypes and an explicit precision keep XLA's dot.
  bf16 = jax.make_jaxpr(fn)(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16))
  assert "cnnrnn_matmul" not in str(bf16)
  precise = lambda l, r: products.dot_general(l, r, dims, precision=lax.Precision.HIGHEST)
  assert "cnnrnn_matmul" not in str(jax.make_jaxpr(precise)(lhs, rhs))


@pytest.mark.parametrize("subscripts,form", [
    ("bhqd,bhkd->bhqk", (False, True)),
    ("bhqk,bhkd->bhqd", (False, False)),
    ("nk,nm->km", (True, False)),
    ("bji,bkj->bik", (True, True)),
    ("bhqk,bkhd->bhqd", None),   # the decode cache's token-major layout
    ("bij,bjk->bki", None),      # a transposed result
    ("bij,bjk->bik,", None),
    ("ij,jk", None),
])
def test_einsum_forms(subscripts, form):
  assert products._einsum_form(subscripts) == form


@pytest.mark.slow
def test_flax_dense_layers_are_accelerated_with_their_own_parameters():
  x = _normal(0, (2, 7, 6))
  for module in (nn.Dense(5), nn.DenseGeneral((3, 4)), nn.DenseGeneral(5, axis=(-2, -1))):
    variables = module.init(jax.random.key(0), x)
    on = accel.accelerate(module.apply, "cpu_native")
    assert "cnnrnn_matmul" in str(jax.make_jaxpr(on)(variables, x))
    assert "cnnrnn_matmul" not in str(jax.make_jaxpr(module.apply)(variables, x))
    assert _rel(jax.jit(on)(variables, x), module.apply(variables, x)) < 1e-6
    grads = [jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(f(v, x)))))(variables)
             for f in (on, module.apply)]
    for got, want in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
      assert _rel(got, want) < 1e-5
    assert jax.tree.map(jnp.shape, jax.eval_shape(accel.accelerate(module.init, "cpu_native"),
                                                  jax.random.key(0), x)) == jax.tree.map(
                                                      jnp.shape, variables)
  # A Dense with a product of its own is left alone.
  own = nn.Dense(5, dot_general=lax.dot_general)
  variables = own.init(jax.random.key(0), x)
  assert "cnnrnn_matmul" not in str(jax.make_jaxpr(accel.accelerate(own.apply, "cpu_native"))(
      variables, x))


@pytest.mark.slow
def test_attention_products_are_accelerated_and_equal_xla():
  x = _normal(0, (2, 9, 8))
  mask = cnn.make_causal_mask(jnp.ones((2, 9)))
  layer = cnn.MultiHeadAttention(num_heads=2, fused_qkv=True)
  variables = layer.init(jax.random.key(0), x)
  apply = lambda v, x: layer.apply(v, x, mask=mask)
  on = accel.accelerate(apply, "cpu_native")
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(on(v, x) ** 2)))(variables))
  # The q/k/v projection and its weight gradient (x is not differentiated), and the two
  # attention products with both of their transposes each; the output projection contracts
  # the heads' [H, Dh] axes in place, not its input's last axes, and stays XLA's.
  assert jaxpr.count("cnnrnn_matmul[") == 8
  assert "transpose_a=True transpose_b=False" in jaxpr  # dK, dV and the weight gradients
  assert _rel(jax.jit(on)(variables, x), apply(variables, x)) < 1e-5
  loss = lambda f: lambda v: jnp.sum(jnp.sin(f(v, x)))
  for got, want in zip(jax.tree.leaves(jax.jit(jax.grad(loss(on)))(variables)),
                       jax.tree.leaves(jax.grad(loss(apply))(variables))):
    assert _rel(got, want) < 1e-5


def test_export_is_portable_and_shard_map_runs_the_kernel_per_shard():
  x = _normal(0, (8, 256, 6))  # 256 rows per shard: enough for the kernel.
  layer = nn.Dense(16)
  variables = layer.init(jax.random.key(0), x)
  loss = lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x)))
  on = jax.jit(accel.accelerate(jax.grad(loss), "cpu_native"))
  exported = export.export(on)(variables, x)
  assert not re.search(r"custom_call\s*@cnnrnn", exported.mlir_module())
  want = jax.grad(loss)(variables, x)
  restored = export.deserialize(exported.serialize()).call(variables, x)
  assert _rel(restored["params"]["kernel"], want["params"]["kernel"]) < 1e-5
  if len(jax.devices()) < 2:
    return
  mesh = sharding.make_mesh((("data", -1),))
  spec = jax.sharding.PartitionSpec
  # As for any JAX function in shard_map, the gradient w.r.t. the replicated parameters
  # sums over the shards: the whole batch's gradient.
  per_shard = jax.shard_map(jax.grad(loss), mesh=mesh, in_specs=(spec(), spec("data")),
                            out_specs=spec())
  xs = jax.device_put(x, sharding.batch_sharding(mesh))
  fn = jax.jit(accel.accelerate(per_shard, "cpu_native"))
  if accel.available()[0]:
    assert "cnnrnn_matmul" in fn.lower(variables, xs).compile().as_text()
  assert _rel(fn(variables, xs)["params"]["kernel"], want["params"]["kernel"]) < 1e-5
