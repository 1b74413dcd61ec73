"""Defining a kernel as a JAX primitive whose meaning is an XLA reference function.

Every primitive of `cnnrnn.accel` is defined by a reference function of `jax.lax` /
`jax.numpy` operations: its abstract evaluation (shapes, dtypes) is the reference's, and it
lowers either to the native kernel or to the reference itself. The choice is made at
lowering time, per program, from what the program is for (`kernel_may_run`), never from a
global of the tracing process, so a traced function means the same on every backend and
every device count. The differentiation and batching rules are defined with each primitive
(conv.py, batch_norm.py) in terms of other primitives or of XLA operations.
"""

from collections.abc import Callable
import functools

import jax
from jax.extend import core
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp

from cnnrnn.accel import native
from cnnrnn.nn import recurrence


def kernel_may_run(ctx: mlir.LoweringRuleContext) -> bool:
  """Whether a CPU lowering may call the native kernel instead of lowering the reference.

  Not when the module is lowered for `jax.export` (an FFI target of this project has no
  compatibility guarantee and may not exist where the module runs), not when the program
  is partitioned by the SPMD partitioner over several devices (a custom call is opaque to
  it: it would replicate the operands), not for operands other than float32, and not when
  the kernels cannot be built here. Inside `shard_map` with every mesh axis manual, the
  operands are per-device blocks and the kernel runs on each.
  """
  module = ctx.module_context
  if module.lowering_parameters.for_export:
    return False
  axis_context = module.axis_context
  if getattr(axis_context, "num_devices", 1) > 1:  # jit over a mesh of several devices
    return False
  mesh = getattr(axis_context, "mesh", None)
  if mesh is not None and mesh.size > 1 and (
      frozenset(axis_context.manual_axes) != frozenset(mesh.axis_names)):
    return False  # Partly automatic sharding inside shard_map.
  if not all(a.dtype == jnp.float32 for a in (*ctx.avals_in, *ctx.avals_out)):
    return False
  return native.available()[0]


# Operands whose type carries a sharding keep XLA's operations (defined once, in cnnrnn.nn).
explicitly_sharded = recurrence.explicitly_sharded


class _Primitive(core.Primitive):
  """A primitive whose operands are cast to vary over the same manual mesh axes when bound
  (`recurrence.vary_together`), as JAX's own primitives do inside `shard_map`."""

  def bind(self, *args, **params):
    return super().bind(*recurrence.vary_together(*args), **params)


def define(name: str, reference: Callable, kernel: Callable | None,
           multiple_results: bool = False) -> core.Primitive:
  """A primitive that means `reference(*args, **params)` and may run `kernel` on the CPU.

  Args:
    name: the primitive's name (as it appears in jaxprs).
    reference: XLA operations computing the primitive; params are keyword arguments.
    kernel: the same function through the native kernels (same arguments and results), or
      None if the primitive always lowers to its reference.
    multiple_results: the functions return a tuple.

  Returns:
    The primitive, with an implementation (a jit of itself), an abstract evaluation and
    lowerings; its differentiation and batching rules are the caller's to define.
  """
  prim = _Primitive(name)
  prim.multiple_results = multiple_results

  @functools.cache
  def jitted(**params):
    return jax.jit(functools.partial(prim.bind, **params))

  prim.def_impl(lambda *args, **params: jitted(**params)(*args))

  def abstract_eval(*avals, **params):
    # The seams call these primitives only on operands whose types carry no explicit
    # sharding (`explicitly_sharded`); inside shard_map the operands vary over the same
    # manual axes (`_Primitive.bind`), and so do the results.
    like = avals[0]
    structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    out = jax.eval_shape(functools.partial(reference, **params), *structs)
    to_aval = lambda s: like.update(shape=s.shape, dtype=s.dtype, weak_type=False)
    return [to_aval(s) for s in out] if multiple_results else to_aval(out)

  prim.def_abstract_eval(abstract_eval)
  reference_rule = mlir.lower_fun(reference, multiple_results)
  mlir.register_lowering(prim, reference_rule)
  if kernel is not None:
    kernel_rule = mlir.lower_fun(kernel, multiple_results)

    def cpu_rule(ctx, *args, **params):
      rule = kernel_rule if kernel_may_run(ctx) else reference_rule
      return rule(ctx, *args, **params)

    mlir.register_lowering(prim, cpu_rule, platform="cpu")
  return prim


def batch_by_vmap(prim: core.Primitive, reference: Callable):
  """Registers the batching rule "vmap the reference" (always correct, never a kernel)."""

  def rule(args, dims, **params):
    out = jax.vmap(functools.partial(reference, **params), in_axes=dims)(*args)
    return out, ([0] * len(out) if prim.multiple_results else 0)

  batching.primitive_batchers[prim] = rule
