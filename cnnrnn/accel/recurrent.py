"""The LSTM time loop as primitives that run on the native kernels: `time_loop`.

`time_loop` has the signature and results of `cnnrnn.nn.recurrence.time_loop`, the hook
`cnnrnn.nn.RNN.time_loop` that acceleration sets (switch.py). For a `cnnrnn.nn.LSTMCell`
over float32 sequences without `seq_lengths` it runs the whole loop as one primitive;
anything else goes to `recurrence.time_loop`. Three primitives, each defined by a scan of
XLA operations (primitives.py), with gate blocks [i, f, g, o] and z_t = xp_t + bias +
h_{t-1} W as in `LSTMCell`:

- `lstm_p(xp, bias, w, c0, h0; save)` -> ys [T, B, H], c_T, h_T, and with `save` the
  residuals: the carries entering each step h_in, c_in [T, B, H], the activated gates acts
  [T, B, 4H] and tanh(c_t) [T, B, H]. Kernel `cnnrnn_lstm_fwd`.
- `lstm_tangent_p(w, acts, c_in, tanh_c, dz, dc0, dh0)` -> dys, dc_T, dh_T: the loop's
  Jacobian-vector product given the residuals, linear in (dz, dc0, dh0), where dz_t is the
  part of z_t's tangent that does not come through h_{t-1} (dxp_t + dbias + h_{t-1} dW).
  Always XLA's scan (forward mode is not what the kernels are for).
- `lstm_cotangent_p(w, acts, c_in, tanh_c, dys, dc_T, dh_T)` -> dz, dc0, dh0: the transpose
  of `lstm_tangent_p`, the backward loop. Kernel `cnnrnn_lstm_bwd`.

The rules make every transformation work: `lstm_p`'s jvp is the residual forward plus
`lstm_tangent_p`, with the weights' part of dz computed for all steps before it
(`rowwise_dot`, so reverse mode gets the weight gradient as one matmul after the backward
loop); `lstm_tangent_p` and `lstm_cotangent_p` transpose to each other; any other jvp
(higher orders) is the jvp of the primitive's reference, and `vmap` runs the vmapped
reference. So `grad` runs the two kernels and nothing else in the loop, while `jvp`,
Hessians, `vmap` and `jax.export` see XLA's operations, with the same numbers to float32
rounding.
"""

import functools
from typing import Any

import jax
from jax import lax
from jax.interpreters import ad
import jax.numpy as jnp

from cnnrnn.accel import native
from cnnrnn.accel import primitives
from cnnrnn.nn import cells
from cnnrnn.nn import recurrence

Array = jax.Array
Carry = Any


def _activate(z: Array) -> tuple[Array, Array, Array, Array]:
  i, f, g, o = jnp.split(z, 4, axis=-1)
  return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def reference_forward(xp, bias, w, c0, h0, *, save: bool):
  """`lstm_p` in XLA's operations."""

  def step(carry, xp_t):
    c, h = carry
    i, f, g, o = _activate(xp_t + bias[None, :] + jnp.dot(h, w))
    c_new = f * c + i * g
    tanh_c = jnp.tanh(c_new)
    h_new = o * tanh_c
    out = (h_new, h, c, jnp.concatenate([i, f, g, o], axis=-1), tanh_c) if save else h_new
    return (c_new, h_new), out

  (c, h), out = lax.scan(step, (c0, h0), xp)
  if save:
    ys, h_in, c_in, acts, tanh_c = out
    return ys, c, h, h_in, c_in, acts, tanh_c
  return out, c, h


def reference_tangent(w, acts, c_in, tanh_c, dz, dc0, dh0):
  """`lstm_tangent_p` in XLA's operations."""

  def step(carry, xs):
    dc, dh = carry
    acts_t, c_t, tanh_c_t, dz_t = xs
    i, f, g, o = jnp.split(acts_t, 4, axis=-1)
    d_i, d_f, d_g, d_o = jnp.split(dz_t + jnp.dot(dh, w), 4, axis=-1)
    dc = (d_f * (f * (1 - f))) * c_t + f * dc + (d_i * (i * (1 - i))) * g + i * (d_g * (1 - g * g))
    dh = (d_o * (o * (1 - o))) * tanh_c_t + o * ((1 - tanh_c_t * tanh_c_t) * dc)
    return (dc, dh), dh

  (dc, dh), dys = lax.scan(step, (dc0, dh0), (acts, c_in, tanh_c, dz))
  return dys, dc, dh


def reference_cotangent(w, acts, c_in, tanh_c, dys, dc_last, dh_last):
  """`lstm_cotangent_p` in XLA's operations: the transpose of `reference_tangent`."""
  t, b, g = acts.shape
  linear_in = (jax.ShapeDtypeStruct((t, b, g), acts.dtype),
               jax.ShapeDtypeStruct((b, g // 4), acts.dtype),
               jax.ShapeDtypeStruct((b, g // 4), acts.dtype))
  tangent = functools.partial(reference_tangent, w, acts, c_in, tanh_c)
  return tuple(jax.linear_transpose(tangent, *linear_in)((dys, dc_last, dh_last)))


def _full_lengths(t: int, b: int) -> Array:
  return jnp.full((b,), t, jnp.int32)  # The kernels' per-row lengths: every step valid.


def _kernel_forward(xp, bias, w, c0, h0, *, save: bool):
  t, b, g = xp.shape
  seq = jax.ShapeDtypeStruct((t, b, g // 4), jnp.float32)
  carry = jax.ShapeDtypeStruct((b, g // 4), jnp.float32)
  out = (seq, carry, carry, seq, seq, jax.ShapeDtypeStruct((t, b, g), jnp.float32), seq)
  result = native.ffi_call("cnnrnn_lstm_fwd", out, xp, bias, w, c0, h0, _full_lengths(t, b),
                           reverse=False, save_residuals=save)
  return tuple(result) if save else tuple(result[:3])


def _kernel_cotangent(w, acts, c_in, tanh_c, dys, dc_last, dh_last):
  t, b, g = acts.shape
  carry = jax.ShapeDtypeStruct((b, g // 4), jnp.float32)
  out = (jax.ShapeDtypeStruct((t, b, g), jnp.float32), carry, carry)
  return tuple(native.ffi_call("cnnrnn_lstm_bwd", out, w, acts, c_in, tanh_c, _full_lengths(t, b),
                               dys, dc_last, dh_last, reverse=False))


lstm_p = primitives.define("cnnrnn_lstm", reference_forward, _kernel_forward,
                           multiple_results=True)
lstm_tangent_p = primitives.define("cnnrnn_lstm_tangent", reference_tangent, None,
                                   multiple_results=True)
lstm_cotangent_p = primitives.define("cnnrnn_lstm_cotangent", reference_cotangent,
                                     _kernel_cotangent, multiple_results=True)


def _jvp_of_reference(reference):
  def rule(primals, tangents, **params):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(functools.partial(reference, **params), tuple(primals), tuple(tangents))

  return rule


def _is_zero(t) -> bool:
  return type(t) is ad.Zero  # pylint: disable=unidiomatic-typecheck


def _lstm_jvp(primals, tangents, *, save: bool):
  if save:  # The residuals' tangents: only differentiating a derivative gets here.
    return _jvp_of_reference(reference_forward)(primals, tangents, save=save)
  xp, _, w, _, _ = primals
  d_xp, d_bias, d_w, d_c0, d_h0 = tangents
  ys, c, h, h_in, c_in, acts, tanh_c = lstm_p.bind(*primals, save=True)
  d_z = ad.instantiate_zeros(d_xp)
  if not _is_zero(d_bias):
    d_z = d_z + d_bias[None, None, :]
  if not _is_zero(d_w):
    d_z = d_z + recurrence.rowwise_dot(h_in, d_w)  # For all steps, before the loop.
  tangents_out = lstm_tangent_p.bind(w, acts, c_in, tanh_c, d_z, ad.instantiate_zeros(d_c0),
                                     ad.instantiate_zeros(d_h0))
  return (ys, c, h), tuple(tangents_out)


def _transpose_to(prim):
  """The transpose rule of a primitive linear in its last three operands, the first four
  (w, acts, c_in, tanh_c) being constants: `prim` applied to the cotangents."""

  def rule(cts, w, acts, c_in, tanh_c, *linear):
    if any(ad.is_undefined_primal(a) for a in (w, acts, c_in, tanh_c)):
      raise NotImplementedError("the LSTM loop's tangent is linear only in its tangents")
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    outs = prim.bind(w, acts, c_in, tanh_c, *cts)
    return [None] * 4 + [o if ad.is_undefined_primal(x) else None for o, x in zip(outs, linear)]

  return rule


ad.primitive_jvps[lstm_p] = _lstm_jvp
ad.primitive_jvps[lstm_tangent_p] = _jvp_of_reference(reference_tangent)
ad.primitive_jvps[lstm_cotangent_p] = _jvp_of_reference(reference_cotangent)
ad.primitive_transposes[lstm_tangent_p] = _transpose_to(lstm_cotangent_p)
ad.primitive_transposes[lstm_cotangent_p] = _transpose_to(lstm_tangent_p)
primitives.batch_by_vmap(lstm_p, reference_forward)
primitives.batch_by_vmap(lstm_tangent_p, reference_tangent)
primitives.batch_by_vmap(lstm_cotangent_p, reference_cotangent)


def _applies(cell, kernel, bias, carry, xp, input_bias, lengths) -> bool:
  """Whether the loop is one `lstm_p` computes: cnnrnn's own LSTMCell (not a subclass,
  which may change the step), float32 throughout, every step valid, no empty dimension."""
  if type(cell) is not cells.LSTMCell or lengths is not None or xp.ndim != 3:  # pylint: disable=unidiomatic-typecheck
    return False
  arrays = [a for a in (kernel, bias, *jax.tree.leaves(carry), xp, input_bias) if a is not None]
  t, b, g = xp.shape
  return (all(a.dtype == jnp.float32 for a in arrays) and min(t, b, g) > 0
          and all(leaf.shape == (b, g // 4) for leaf in jax.tree.leaves(carry))
          and not primitives.explicitly_sharded(*arrays))


def time_loop(cell: cells.RecurrentCell, kernel: Array, bias: Array | None, carry: Carry,
              xp: Array, input_bias: Array | None, lengths: Array | None,
              unroll: int = 1) -> tuple[Carry, Array]:
  """`cnnrnn.nn.recurrence.time_loop`, as `lstm_p` where that computes it (`unroll` then
  has no effect: the kernel runs the whole loop)."""
  if not _applies(cell, kernel, bias, carry, xp, input_bias, lengths):
    return recurrence.time_loop(cell, kernel, bias, carry, xp, input_bias, lengths,
                                unroll=unroll)
  c0, h0 = carry
  gate_bias = jnp.zeros(xp.shape[-1], jnp.float32)
  for b in (input_bias, bias):
    if b is not None:
      gate_bias = gate_bias + b
  ys, c, h = lstm_p.bind(xp, gate_bias, kernel, c0, h0, save=False)
  return (c, h), ys
