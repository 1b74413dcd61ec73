"""The fast path of the scan driver: a time loop with its Jacobian-vector product written out.

`time_loop(cell, ...)` runs a cnnrnn cell (one that declares `step_forward`/`step_tangent`,
see `cnnrnn.nn.cells`) over projected inputs xp [T, B, G*H] and returns the final carry and
the outputs. It is a `jax.custom_jvp`: a rule, not a reverse-mode trick, so forward mode,
reverse mode (JAX transposes the rule), higher derivatives, `vmap`, `remat`, `jax.export`
and sharding all compose with it. The rule is arranged so that reverse mode is fast:

- the primal loop saves the cell's residuals (its activated gates), so the tangent loop
  recomputes nothing;
- the weights' tangent enters every step as `a_t @ d_kernel + d_bias`, where a_t is the
  operand of the step's recurrent product (h_{t-1} for an LSTM). Those products do not
  depend on the tangent carry, so the rule computes them for all steps at once, before
  the tangent loop (`rowwise_dot`); transposed, that is one [H, T*B] x [T*B, G*H] matmul
  after the backward loop instead of T small outer products inside it;
- for cells whose products are added straight to the inputs (Elman, LSTM, Cho's GRU) that
  term is folded into the inputs' tangent, so the backward loop emits one stacked
  cotangent, shared by the input and recurrent weight gradients and the biases.

Nothing here reshapes [T, B, ...] into [T*B, ...]: that would merge a batch-sharded
dimension into another and make the SPMD partitioner gather the batch. `rowwise_dot`
contracts over T and B in place instead.

Variable lengths follow `flax.linen.RNN`: every step runs for every row (the carry is not
frozen), and the final carry of row b is the one after step lengths[b] - 1 (the initial
carry for a length of 0), tracked in the loop rather than by stacking every carry.
"""

from typing import Any

import jax
from jax import lax
from jax.extend import core as jex_core
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp

from cnnrnn.nn.cells import RecurrentCell, RecurrentDot, bias_row

Array = jax.Array
Carry = Any


# --------------------------------------------------------------------------- rowwise_dot


def _rowwise_dot_impl(a, w):
  """a [..., K] @ w [K, N] -> [..., N]."""
  return lax.dot_general(a, w, (((a.ndim - 1,), (0,)), ((), ())))


def _rowwise_dot_abstract(a, w):
  # `a`'s type with the result's shape: inside shard_map it keeps the manual axes over which
  # the operands vary (`vary_together` made them the same).
  return a.update(shape=a.shape[:-1] + w.shape[1:], dtype=jnp.result_type(a.dtype, w.dtype),
                  weak_type=False)


def _rowwise_dot_transpose_a(ct, a, w):
  del a
  return lax.dot_general(ct, w, (((ct.ndim - 1,), (1,)), ((), ()))).astype(w.dtype)


def _rowwise_dot_transpose_w(ct, a, w):
  # [..., K] x [..., N] -> [K, N], contracting every leading dimension in place. The
  # operand order is the point: XLA:CPU then transposes the K-wide `a` rather than the
  # (usually wider) cotangent; JAX's own transpose of a dot puts the cotangent first and
  # ran the weight gradient of a char-LSTM step 1.8x slower.
  del w
  lead = tuple(range(a.ndim - 1))
  return lax.dot_general(a, ct, ((lead, lead), ((), ())))


rowwise_dot_p = jex_core.Primitive("cnnrnn_rowwise_dot")
rowwise_dot_p.def_impl(_rowwise_dot_impl)
rowwise_dot_p.def_abstract_eval(_rowwise_dot_abstract)
mlir.register_lowering(rowwise_dot_p, mlir.lower_fun(_rowwise_dot_impl, multiple_results=False))
ad.defbilinear(rowwise_dot_p, _rowwise_dot_transpose_a, _rowwise_dot_transpose_w)


def _rowwise_dot_batch(args, dims):
  # Under vmap the primitive becomes the plain dot it stands for (same numbers).
  return jax.vmap(_rowwise_dot_impl, in_axes=dims)(*args), 0


batching.primitive_batchers[rowwise_dot_p] = _rowwise_dot_batch


def _varying_axes(x: Array) -> frozenset[str]:
  manual = getattr(jax.typeof(x), "manual_axis_type", None)
  return frozenset(getattr(manual, "varying", ()))


def vary_together(*arrays: Array) -> tuple[Array, ...]:
  """The arrays, each cast (`jax.lax.pcast`) to vary over every manual mesh axis any of them
  varies over (inside `shard_map`; elsewhere unchanged).

  What JAX's own primitives do to their operands: a primitive of cnnrnn's then has one
  type for its operands and results, and the transpose of the cast (a `psum`) sums the
  cotangent of, e.g., a replicated weight over the shards.
  """
  axes = frozenset().union(*(_varying_axes(a) for a in arrays))
  if not axes:
    return arrays
  return tuple(a if _varying_axes(a) == axes
               else jax.lax.pcast(a, tuple(sorted(axes - _varying_axes(a))), to="varying")
               for a in arrays)


def _vary_tree_together(*trees):
  """`vary_together` over every array of `trees` (a scan's carry must have the type of what
  the step makes of it: an initial carry of zeros varies as the inputs do)."""
  leaves, treedef = jax.tree.flatten(trees)
  return jax.tree.unflatten(treedef, vary_together(*leaves))


def explicitly_sharded(*arrays: Array) -> bool:
  """Whether any array's type carries a sharding (a mesh with `AxisType.Explicit` axes).

  Custom primitives do not propagate such types (their reference functions would need an
  `out_sharding` for their contractions), so there the plain operations are used.
  """
  return any(any(s is not None for s in jax.typeof(a).sharding.spec) for a in arrays)


def rowwise_dot(a: Array, w: Array) -> Array:
  """`a @ w` for a [..., K] and w [K, N], whose gradient w.r.t. w is `a^T ct` with `a`
  first (see `_rowwise_dot_transpose_w`). A primitive with the dot's own jvp, transpose
  and batching rules, lowered to a plain `dot_general`; under explicit sharding (whose
  types the primitive does not propagate) the plain dot itself."""
  if a.ndim < 2 or w.ndim != 2 or a.shape[-1] != w.shape[0]:
    raise ValueError(f"rowwise_dot takes [..., K] and [K, N], got {a.shape} and {w.shape}")
  if explicitly_sharded(a, w):
    return _rowwise_dot_impl(a, w)
  return rowwise_dot_p.bind(*vary_together(a, w))


# --------------------------------------------------------------------------- the loop


class _TangentDot:
  """`rdot_t(da, gates)` of `step_tangent`: da @ kernel[:, cols], plus the weights' part
  of the tangent when it was not folded into d_xp (`extra[k]` for the k-th call)."""

  def __init__(self, kernel: Array, extra: tuple[Array | None, ...]):
    self.kernel, self.extra, self.calls = kernel, extra, 0
    self._cols = RecurrentDot(kernel, None).cols

  def __call__(self, da: Array, gates: slice = slice(None)) -> Array:
    lo, hi = self._cols(gates)
    p = jnp.dot(da, self.kernel[:, lo:hi])
    extra = self.extra[self.calls] if self.calls < len(self.extra) else None
    self.calls += 1
    return p if extra is None else p + extra


def _keep(mask_t: Array, new: Carry, old: Carry) -> Carry:
  """new where mask_t [B] is set, else old (leafwise, rows broadcast explicitly)."""
  return jax.tree.map(
      lambda n, o: jnp.where(mask_t.reshape(-1, *([1] * (n.ndim - 1))), n, o), new, old)


def _cast_like(tree: Carry, like: Carry) -> Carry:
  return jax.tree.map(lambda x, ref: x.astype(ref.dtype), tree, like)


def _is_zero(t) -> bool:
  return isinstance(t, jax.custom_derivatives.SymbolicZero)


def _instantiate(t, primal):
  """Tangent t with its symbolic zeros (leafwise) replaced by zero arrays like `primal`."""
  return jax.tree.map(lambda d, p: jnp.zeros_like(p) if _is_zero(d) else d, t, primal,
                      is_leaf=_is_zero)


def time_loop(cell: RecurrentCell, kernel: Array, bias: Array | None, carry: Carry, xp: Array,
              input_bias: Array | None, lengths: Array | None,
              unroll: int = 1) -> tuple[Carry, Array]:
  """Runs `cell.step_forward` over time (see the module docstring).

  Args:
    cell: a cell with `step_forward` and `step_tangent` (only those pure methods are used).
    kernel: [H, G*H] recurrent kernel, in the compute dtype.
    bias: [G*H] recurrent bias or None.
    carry: the initial carry, rows [B, ...].
    xp: [T, B, G*H] input projections without the input bias.
    input_bias: [G*H] or None, added to xp inside the loop.
    lengths: [B] integer sequence lengths, or None (all T).
    unroll: `lax.scan` unroll factor.

  Returns:
    (final carry, outputs [T, B, H]).
  """
  kernel, bias, carry, xp, input_bias = _vary_tree_together(kernel, bias, carry, xp, input_bias)

  def primal(kernel, bias, carry, xp, input_bias, lengths, save: bool):
    """The forward loop; with `save`, also what the tangent loop needs, and the static
    layout of the step's recurrent products (recorded while tracing the step once)."""
    layout = {}
    # Built here, not closed over: a constant made outside the custom_jvp would be a tracer
    # of an enclosing transformation (jax.checkpoint) leaking into the rule.
    steps = jnp.arange(xp.shape[0], dtype=jnp.int32)

    def body(state, xs):
      carry, final = state
      xp_t, t = xs
      if input_bias is not None:
        xp_t = xp_t + bias_row(input_bias, xp_t.ndim)
      rdot = RecurrentDot(kernel, bias)
      new, y, res = cell.step_forward(rdot, carry, xp_t)
      new = _cast_like(new, carry)
      final = new if lengths is None else _keep(t < lengths, new, final)
      if not save:
        return (new, final), y
      # An operand that is a leaf of the incoming carry (an LSTM's h) is stacked with the
      # carries already; store the others (Cho's GRU: r * h).
      leaves = jax.tree.leaves(carry)
      alias = [next((i for i, leaf in enumerate(leaves) if a is leaf), None)
               for a in rdot.operands]
      layout.update(columns=tuple(rdot.columns), alias=tuple(alias))
      own = tuple(a for a, i in zip(rdot.operands, alias) if i is None)
      return (new, final), (y, res, carry, own)

    (_, final), out = lax.scan(body, (carry, carry), (xp, steps), unroll=unroll)
    return final, out, layout

  @jax.custom_jvp
  def loop(kernel, bias, carry, xp, input_bias, lengths):
    final, ys, _ = primal(kernel, bias, carry, xp, input_bias, lengths, save=False)
    return final, ys

  def loop_jvp(primals, tangents):
    kernel, bias, carry, xp, input_bias, lengths = primals
    d_kernel, d_bias, d_carry, d_xp, d_input_bias, _ = tangents
    final, (ys, res, carries, own), layout = primal(*primals, save=True)
    leaves = jax.tree.leaves(carries)
    own_iter = iter(own)
    operands = [next(own_iter) if i is None else leaves[i] for i in layout["alias"]]

    # The weights' part of each recurrent product's tangent, for all steps at once.
    weight_terms = []
    for (lo, hi), a in zip(layout["columns"], operands, strict=True):
      term = None
      if not _is_zero(d_kernel):
        term = rowwise_dot(a, d_kernel[:, lo:hi])  # [T, B, cols]
      if bias is not None and not _is_zero(d_bias):
        db = bias_row(d_bias[lo:hi], a.ndim)
        term = db if term is None else term + db
      weight_terms.append(term)

    d_in = _instantiate(d_xp, xp)
    if input_bias is not None and not _is_zero(d_input_bias):
      d_in = d_in + bias_row(d_input_bias, d_in.ndim)
    extra = tuple(weight_terms)
    if cell.products_add_to_inputs():
      for (lo, hi), term in zip(layout["columns"], weight_terms):
        if term is not None:
          d_in = (d_in + term if (lo, hi) == (0, d_in.shape[-1])
                  else d_in.at[..., lo:hi].add(jnp.broadcast_to(term, d_in[..., lo:hi].shape)))
      extra = ()
    extra = tuple(None if e is None else jnp.broadcast_to(e, ys.shape[:2] + e.shape[2:])
                  for e in extra)

    def body(state, xs):
      d_c, d_final = state
      carry_t, res_t, d_in_t, extra_t, t = xs
      d_new, d_y = cell.step_tangent(_TangentDot(kernel, extra_t), carry_t, res_t, d_c, d_in_t)
      d_new = _cast_like(d_new, carry_t)
      d_final = d_new if lengths is None else _keep(t < lengths, d_new, d_final)
      return (d_new, d_final), d_y.astype(ys.dtype)

    d_carry = _instantiate(d_carry, carry)
    steps = jnp.arange(xp.shape[0], dtype=jnp.int32)
    (_, d_final), d_ys = lax.scan(body, (d_carry, d_carry),
                                  (carries, res, d_in, extra, steps), unroll=unroll)
    return (final, ys), (d_final, d_ys)

  loop.defjvp(loop_jvp, symbolic_zeros=True)
  return loop(kernel, bias, carry, xp, input_bias, lengths)


def reference_loop(cell: RecurrentCell, kernel: Array, bias: Array | None, carry: Carry,
                   xp: Array, input_bias: Array | None, lengths: Array | None,
                   unroll: int = 1,
                   hidden_delta: Array | None = None) -> tuple[Carry, Array]:
  """The same function as `time_loop`, differentiated by plain autodiff.

  Args (besides `time_loop`'s):
    hidden_delta: optional [T, B, H] added to each step's hidden state (in the output and
      the carry): a zero perturbation whose gradient is dL/dh_t (`cnnrnn.analysis`).
  """
  kernel, bias, carry, xp, input_bias, hidden_delta = _vary_tree_together(
      kernel, bias, carry, xp, input_bias, hidden_delta)
  steps = jnp.arange(xp.shape[0], dtype=jnp.int32)

  def body(state, xs):
    carry, final = state
    xp_t, t, delta_t = xs
    if input_bias is not None:
      xp_t = xp_t + bias_row(input_bias, xp_t.ndim)
    new, y, _ = cell.step_forward(RecurrentDot(kernel, bias), carry, xp_t)
    if delta_t is not None:
      y = y + delta_t
      new = cell.with_hidden_state(new, cell.hidden_state(new) + delta_t)
    new = _cast_like(new, carry)
    final = new if lengths is None else _keep(t < lengths, new, final)
    return (new, final), y

  (_, final), ys = lax.scan(body, (carry, carry), (xp, steps, hidden_delta), unroll=unroll)
  return final, ys

