"""The LSTM time loops and the embedding gradient on native CPU kernels (RNN side only).

Transitional: the convolution and BatchNorm kernels, the sources and their build moved to
`cnnrnn.accel`; what stays here serves `cnnrnn.nn.recurrent` and `cnnrnn.models.rnn_lm`
until the recurrent layers move to the same seam (issue 12).
"""

from collections.abc import Iterator
import contextlib
import functools

import jax
from jax import lax
import jax.numpy as jnp

from cnnrnn.accel.native import available
from cnnrnn.accel.native import ffi_call as _ffi_call

_forced: bool | None = None


@contextlib.contextmanager
def override(use: bool | None) -> Iterator[None]:
  """Within the block, trace with the native kernels wherever they can run (True), never
  (False), or where `applies` decides by default (None).

  True lifts the single-device condition: for programs that are not sharded, on a process
  that has several devices (tests with fake CPU devices, for instance). The choice is made
  when a function is traced: a jitted function keeps what its first trace chose.
  """
  global _forced
  previous, _forced = _forced, use
  try:
    yield
  finally:
    _forced = previous


def applies(*arrays: jax.Array) -> bool:
  """Whether the native kernels take these arrays in the computation being traced.

  They need float32 arrays, the CPU backend and, unless `override(True)`, a single device
  (`jax.device_count() == 1`): a custom call is opaque to the SPMD partitioner, which would
  replicate its operands, so programs that may be sharded keep XLA's operations.
  """
  if _forced is False or not all(a.dtype == jnp.float32 for a in arrays):
    return False
  return (jax.default_backend() == "cpu" and (_forced or jax.device_count() == 1)
          and available()[0])


def _lstm_forward(kernel, bias, c0, h0, xp, lengths, reverse, save_residuals):
  t, b, g = xp.shape
  seq = jax.ShapeDtypeStruct((t, b, g // 4), jnp.float32)
  carry = jax.ShapeDtypeStruct((b, g // 4), jnp.float32)
  out = (seq, carry, carry, seq, seq, jax.ShapeDtypeStruct((t, b, g), jnp.float32), seq)
  return _ffi_call("cnnrnn_lstm_fwd", out, xp, bias, kernel, c0, h0, lengths, reverse=reverse,
                   save_residuals=save_residuals)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def lstm(kernel: jax.Array, bias: jax.Array, c0: jax.Array, h0: jax.Array, xp: jax.Array,
         lengths: jax.Array, reverse: bool = False):
  """The LSTM time loop of `cnnrnn.nn.RNN(LSTMCell)` on the native kernels (recurrent.cc).

  Raises RuntimeError if the kernels are unavailable. Gate blocks [i, f, g, o], as LSTMCell;
  example b is updated at step t only if t < lengths[b] (else its carry is kept and its
  output is zero). Reverse-mode differentiable; the recurrent-weight gradient is one matmul
  over all steps.

  Args:
    kernel: [H, 4H] float32 recurrent kernel.
    bias: [4H] float32, added to every step's gates (the input and recurrent biases).
    c0, h0: [B, H] float32 initial carry.
    xp: [T, B, 4H] float32 input projections, time-major.
    lengths: [B] int32.
    reverse: run t = T-1 .. 0.

  Returns:
    ((c_T, h_T), ys [T, B, H]).
  """
  ys, c, h, *_ = _lstm_forward(kernel, bias, c0, h0, xp, lengths, reverse, False)
  return (c, h), ys


def _lstm_fwd(kernel, bias, c0, h0, xp, lengths, reverse):
  ys, c, h, h_in, c_in, acts, tanh_c = _lstm_forward(kernel, bias, c0, h0, xp, lengths, reverse,
                                                     True)
  return ((c, h), ys), (kernel, h_in, c_in, acts, tanh_c, lengths)


def _lstm_bwd(reverse, residuals, cotangents):
  kernel, h_in, c_in, acts, tanh_c, lengths = residuals
  (dc, dh), dys = cotangents
  t, b, g = acts.shape
  carry = jax.ShapeDtypeStruct((b, g // 4), jnp.float32)
  out = (jax.ShapeDtypeStruct((t, b, g), jnp.float32), carry, carry)
  dz, dc0, dh0 = _ffi_call("cnnrnn_lstm_bwd", out, kernel, acts, c_in, tanh_c, lengths, dys, dc,
                           dh, reverse=reverse)
  # sum_t h_in_t^T dz_t as one [H, T*B] x [T*B, 4H] matmul.
  dz2 = dz.reshape(t * b, g)
  d_kernel = lax.dot_general(h_in.reshape(t * b, -1), dz2, (((0,), (0,)), ((), ())))
  return d_kernel, dz2.sum(axis=0), dc0, dh0, dz, None


lstm.defvjp(_lstm_fwd, _lstm_bwd)


def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
  """`jnp.take(table, ids, axis=0)` (an embedding lookup) whose gradient is one native call.

  XLA differentiates the lookup into a scatter-add onto a zero-filled [V, F] buffer and
  schedules the fill at the start of the step, where it delays the forward pass
  (embedding.cc). Where `applies(table)`, the gradient is instead the native
  `cnnrnn_rows_grad`, which runs once the cotangent exists; elsewhere this is `jnp.take`.
  The value, and the handling of negative and out-of-range ids, are `jnp.take`'s; the
  gradient equals XLA's to float32 rounding (repeated ids are summed in order).

  Args:
    table: [V, F].
    ids: integer ids of any shape.

  Returns:
    [*ids.shape, F].
  """
  if applies(table):
    return _take_rows(table, ids, table.shape[0])
  return jnp.take(table, ids, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _take_rows(table, ids, num_rows):
  del num_rows  # Only the backward pass needs it.
  return jnp.take(table, ids, axis=0)


def _take_rows_fwd(table, ids, num_rows):
  return jnp.take(table, ids, axis=0), ids


def _take_rows_bwd(num_rows, ids, dy):
  f = dy.shape[-1]
  flat = ids.reshape(-1).astype(jnp.int32)
  flat = jnp.where(flat < 0, flat + num_rows, flat)  # jnp.take's negative ids count from the end.
  d_table = _ffi_call("cnnrnn_rows_grad", jax.ShapeDtypeStruct((num_rows, f), jnp.float32),
                      dy.reshape(-1, f), flat)
  return d_table, None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)
