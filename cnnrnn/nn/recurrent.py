"""Recurrent cells, the one scan driver, bidirectional and stacked wrappers.

Cells (`SimpleRNNCell`, `LSTMCell`, `GRUCell`) share the interface of
`flax.linen.recurrent`: `cell(carry, x_t) -> (carry, y_t)`, `initialize_carry(rng,
input_shape)` and `num_feature_axes`. Each also exposes the same computation split in two,
which is what the driver `RNN` runs:

  xp = cell.project_inputs(x)              # W_x x_t + b for all T steps: one matmul
  carry, y_t = cell.step(rdot, carry, xp_t)  # the rest, inside the time loop

(the driver leaves the input bias b out of that matmul and adds it to xp_t in the loop).

`step` touches the recurrent weights only through `rdot(a, gates)`, which returns
`a @ recurrent_kernel[:, gates] + recurrent_bias[gates]` (gates: a slice of gate blocks).
Because every use of the recurrent weights goes through `rdot`, the driver can save the
recurrent products in the forward pass and compute the recurrent-weight gradient after the
backward loop as one large matmul, `sum_t a_t^T dp_t` over [H, T*B] x [T*B, G*H], instead
of T small outer products inside the loop (`RNN(custom_vjp=True)`, the default).

Inside that backward loop the driver can replay each step under `jax.vjp`, which works for
any cell but recomputes the gate activations in many small fusions. A cell can instead split
`step` into `step_forward`, which also returns residuals (e.g. the activated gates), and a
hand-written `step_backward`; the backward step is then one dot plus a few elementwise ops.
`LSTMCell`, `GRUCell` and `SimpleRNNCell` do this; a cell that defines only `step` is
replayed.

Parameters of a cell with hidden size H, input size F and G gate blocks:

  input/kernel       [F, G*H]   input/bias      [G*H]   (if use_bias)
  recurrent/kernel   [H, G*H]   recurrent/bias  [G*H]   (if it has a recurrent bias)

Gate blocks follow PyTorch's order, so converting `weight_ih_l0` / `weight_hh_l0` is a
transpose: LSTM [i, f, g, o]; GRU [r, z, n]; SimpleRNN one block.

Carries: `SimpleRNNCell` and `GRUCell` carry h [..., H]; `LSTMCell` carries (c, h).
"""

from collections.abc import Callable, Mapping
import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnrnn.nn import native

Array = jax.Array
Carry = Any
Initializer = Callable[..., Array]

_default_kernel_init = nn.initializers.lecun_normal()
_default_recurrent_init = nn.initializers.orthogonal()


def _bias_row(bias: Array, ndim: int) -> Array:
  """[N] -> [1, ..., 1, N] so that adding it to an ndim array is an explicit broadcast."""
  return bias.reshape((1,) * (ndim - 1) + (-1,))


class _RecurrentDot:
  """`rdot(a, gates)`: a @ kernel[:, cols] + bias[cols], remembering operands and products.

  The driver reads `operands`/`products`/`columns` after tracing one step; plain use
  ignores them (unused values are removed by XLA).
  """

  def __init__(self, kernel: Array, bias: Array | None):
    self.kernel, self.bias = kernel, bias
    self.operands, self.products, self.columns = [], [], []

  def _cols(self, gates: slice) -> tuple[int, int]:
    width = self.kernel.shape[0]  # Every gate block is H wide.
    block = range(self.kernel.shape[1] // width)[gates]
    if block.step != 1 or len(block) == 0:
      raise ValueError(f"rdot gates must be a contiguous non-empty slice, got {gates}")
    return block.start * width, block.stop * width

  def _kernel(self, lo: int, hi: int) -> Array:
    return self.kernel if (lo, hi) == (0, self.kernel.shape[1]) else self.kernel[:, lo:hi]

  def _product(self, a: Array, lo: int, hi: int) -> Array:
    p = jnp.dot(a, self._kernel(lo, hi))
    if self.bias is not None:
      p = p + _bias_row(self.bias[lo:hi], p.ndim)
    return p

  def __call__(self, a: Array, gates: slice = slice(None)) -> Array:
    lo, hi = self._cols(gates)
    p = self._product(a, lo, hi)
    self.operands.append(a)
    self.products.append(p)
    self.columns.append((lo, hi))
    return p


@jax.custom_vjp
def _replay_product(a, kernel, saved, tap):
  """Returns the product saved in the forward pass; its gradient w.r.t. `a` is exact."""
  del a, kernel
  return saved + tap


def _replay_product_fwd(a, kernel, saved, tap):
  del a
  return saved + tap, kernel


def _replay_product_bwd(kernel, g):
  # d(a @ K)/da; the kernel's gradient is accumulated after the loop, not here.
  return jnp.dot(g, kernel.T), None, None, g


_replay_product.defvjp(_replay_product_fwd, _replay_product_bwd)


class _ReplayDot(_RecurrentDot):
  """Backward-pass `rdot`: replays saved products, exposing their cotangents via `taps`."""

  def __init__(self, kernel, bias, saved, taps):
    super().__init__(kernel, bias)
    self.saved, self.taps = saved, taps

  def _product(self, a, lo, hi):
    k = len(self.products)  # This is the k-th rdot call of the step.
    return _replay_product(a, self._kernel(lo, hi), self.saved[k], self.taps[k])


class _RecurrentDotTranspose(_RecurrentDot):
  """`rdot_t(a, dp, gates)`: the transpose of `rdot(a, gates)` for `step_backward`.

  Returns dp @ kernel[:, cols]^T, the cotangent of a, and records a in `operands` and dp
  in `products` (here the cotangents of the products) for the kernel gradient that the
  driver forms after the loop.

  `kernel_t` is kernel^T, transposed once outside the loop: a per-step product with a
  transposed operand ran ~10% slower on XLA:CPU (B=20, H=650).
  """

  def __init__(self, kernel: Array, bias: Array | None, kernel_t: Array):
    super().__init__(kernel, bias)
    self.kernel_t = kernel_t

  def __call__(self, a: Array, dp: Array, gates: slice = slice(None)) -> Array:
    lo, hi = self._cols(gates)
    self.operands.append(a)
    self.products.append(dp)
    self.columns.append((lo, hi))
    kernel_t = self.kernel_t if (lo, hi) == (0, self.kernel.shape[1]) else self.kernel_t[lo:hi]
    return jnp.dot(dp, kernel_t)


class RecurrentCell(nn.Module):
  """Base of all cells: the input/recurrent weight split and the common interface.

  Attributes:
    features: hidden size H.
    use_bias: whether the cell has biases at all (PyTorch's `bias`).
    recurrent_bias: add a second bias to the recurrent product (PyTorch has one per
      matmul; mathematically redundant except inside GRU's reset_after form).
    kernel_init: initializer of input/kernel [F, G*H].
    recurrent_kernel_init: initializer of recurrent/kernel [H, G*H].
    bias_init: initializer of the biases.
    dtype: compute dtype.
    param_dtype: parameter storage dtype.
  """

  num_gates: ClassVar[int] = 1

  features: int
  use_bias: bool = True
  recurrent_bias: bool = False
  kernel_init: Initializer = _default_kernel_init
  recurrent_kernel_init: Initializer = _default_recurrent_init
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _has_recurrent_bias(self) -> bool:
    return self.use_bias and self.recurrent_bias

  def _input_bias_init(self) -> Initializer:
    return self.bias_init

  def setup(self):
    width = self.num_gates * self.features
    self.input = _InputWeights(width, self.use_bias, self.kernel_init,
                               self._input_bias_init(), self.param_dtype)
    self.recurrent = _RecurrentWeights(self.features, width, self._has_recurrent_bias(),
                                       self.recurrent_kernel_init, self.bias_init,
                                       self.param_dtype)

  def input_weights(self, num_inputs: int) -> tuple[Array, Array | None]:
    """(input kernel [F, G*H], input bias [G*H] or None) for F = num_inputs, cast to `dtype`."""
    kernel, bias = self.input(num_inputs)
    kernel = kernel.astype(self.dtype)
    return kernel, None if bias is None else bias.astype(self.dtype)

  def project_inputs(self, x: Array, *, add_bias: bool = True) -> Array:
    """W_x x (+ b): [..., F] -> [..., G*H]. The driver calls it once on [T*B, F] without
    the bias, which it adds inside the time loop (saving a pass over [T, B, G*H])."""
    kernel, bias = self.input_weights(x.shape[-1])
    xp = jnp.dot(x.astype(self.dtype), kernel)
    return xp + _bias_row(bias, xp.ndim) if add_bias and bias is not None else xp

  def recurrent_weights(self) -> tuple[Array, Array | None]:
    """(recurrent kernel [H, G*H], recurrent bias [G*H] or None), cast to `dtype`."""
    kernel, bias = self.recurrent()
    kernel = kernel.astype(self.dtype)
    return kernel, None if bias is None else bias.astype(self.dtype)

  @nn.nowrap  # Pure: no variable access, so it may run inside any jax transform.
  def step(self, rdot: Callable[..., Array], carry: Carry, xp: Array) -> tuple[Carry, Array]:
    """One time step from the projected input xp [..., G*H]; see the module docstring.

    Args:
      rdot: `rdot(a, gates=slice(None))` -> a @ U[:, gates] (+ recurrent bias), where
        `gates` selects gate blocks; the only access to the recurrent weights.
      carry: the previous carry.
      xp: [..., G*H] projected input of this step.

    Returns:
      (new carry, output h [..., H]).
    """
    new_carry, y, _ = self.step_forward(rdot, carry, xp)
    return new_carry, y

  @nn.nowrap
  def step_forward(self, rdot: Callable[..., Array], carry: Carry,
                   xp: Array) -> tuple[Carry, Array, Any]:
    """`step` that also returns the residuals its `step_backward` needs.

    A cell implements either `step` alone (the driver's backward pass then replays the
    step under `jax.vjp`) or `step_forward` and `step_backward` (and inherits `step`).

    Returns:
      (new carry, output h [..., H], residuals: a pytree of arrays with leading dims [...]).
    """
    raise NotImplementedError

  @nn.nowrap
  def step_backward(self, rdot_t: Callable[..., Array], carry: Carry, residuals: Any,
                    d_carry: Carry, dy: Array) -> tuple[Carry, Array]:
    """Hand-written VJP of `step_forward` (the gradient of the recurrent weights excluded).

    Args:
      rdot_t: `rdot_t(a, dp, gates=slice(None))` -> dp @ U[:, gates]^T, the transpose of
        `rdot(a, gates)`; call it once for every `rdot` call of the forward step (it also
        records (a, dp) for the recurrent-weight gradient).
      carry: the carry that `step_forward` received.
      residuals: what `step_forward` returned as residuals.
      d_carry: cotangent of the new carry.
      dy: [..., H] cotangent of the output.

    Returns:
      (cotangent of `carry`, cotangent of xp [..., G*H]).
    """
    raise NotImplementedError

  def __call__(self, carry: Carry, x: Array) -> tuple[Carry, Array]:
    """One time step.

    Args:
      carry: the previous carry (see `initialize_carry`).
      x: [..., F] inputs of this step.

    Returns:
      (new carry, output [..., H]).
    """
    return self.step(_RecurrentDot(*self.recurrent_weights()), carry, self.project_inputs(x))

  @nn.nowrap
  def initialize_carry(self, rng: Any, input_shape: tuple[int, ...]) -> Carry:
    """Zero carry for inputs of shape [..., F] (rng unused: carries start at zero)."""
    del rng
    return jnp.zeros((*input_shape[:-1], self.features), self.dtype)

  @nn.nowrap
  def hidden_state(self, carry: Carry) -> Array:
    """The part of the carry that is also the cell's output, h [..., H]."""
    return carry

  @nn.nowrap
  def with_hidden_state(self, carry: Carry, h: Array) -> Carry:
    """`carry` with its hidden state replaced by h."""
    del carry
    return h

  @property
  def num_feature_axes(self) -> int:
    return 1


class _InputWeights(nn.Module):
  """Holds input/kernel [F, G*H] and the optional input/bias [G*H] (nn.Dense's layout)."""

  width: int
  use_bias: bool
  kernel_init: Initializer
  bias_init: Initializer
  param_dtype: Any

  @nn.compact
  def __call__(self, num_inputs: int) -> tuple[Array, Array | None]:
    kernel = self.param("kernel", self.kernel_init, (num_inputs, self.width), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.width,), self.param_dtype)
            if self.use_bias else None)
    return kernel, bias


class _RecurrentWeights(nn.Module):
  """Holds recurrent/kernel [H, G*H] and the optional recurrent/bias [G*H]."""

  features: int
  width: int
  use_bias: bool
  kernel_init: Initializer
  bias_init: Initializer
  param_dtype: Any

  def setup(self):
    self.kernel = self.param("kernel", self.kernel_init, (self.features, self.width),
                             self.param_dtype)
    self.bias = (self.param("bias", self.bias_init, (self.width,), self.param_dtype)
                 if self.use_bias else None)

  def __call__(self) -> tuple[Array, Array | None]:
    return self.kernel, self.bias


_NONLINEARITIES: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": nn.relu}


class SimpleRNNCell(RecurrentCell):
  """Elman cell: h_t = tanh(x_t W_x + b + h_{t-1} W_h [+ b_h]).

  Attributes (besides RecurrentCell's):
    nonlinearity: "tanh" (Elman) or "relu" (PyTorch's `nonlinearity="relu"`).
  """

  num_gates: ClassVar[int] = 1
  nonlinearity: str = "tanh"

  @nn.nowrap
  def step_forward(self, rdot, carry, xp):
    """Residuals: h_t [..., H]."""
    if self.nonlinearity not in _NONLINEARITIES:
      raise ValueError(f"nonlinearity={self.nonlinearity!r}; allowed: {sorted(_NONLINEARITIES)}")
    h = _NONLINEARITIES[self.nonlinearity](xp + rdot(carry))
    return h, h, h

  @nn.nowrap
  def step_backward(self, rdot_t, carry, residuals, d_carry, dy):
    h, d_h = residuals, d_carry + dy
    if self.nonlinearity == "tanh":
      d_z = d_h * (1 - h * h)
    else:  # relu: h > 0 exactly where its input is.
      d_z = jnp.where(h > 0, d_h, jnp.zeros_like(d_h))
    return rdot_t(carry, d_z), d_z


class LSTMCell(RecurrentCell):
  """LSTM (Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000).

  With z = x_t W_x + b + h_{t-1} W_h [+ b_h] split into gate blocks [i, f, g, o]:
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)     (the additive cell update)
    h_t = sigmoid(o) * tanh(c_t)
  The carry is (c, h).

  Attributes (besides RecurrentCell's):
    unit_forget_bias: initialize the forget-gate block of the input bias to 1
      (Jozefowicz et al. 2015), so that early in training the cell remembers.
  """

  num_gates: ClassVar[int] = 4
  unit_forget_bias: bool = True

  def _input_bias_init(self) -> Initializer:
    if not self.unit_forget_bias:
      return self.bias_init
    h, base = self.features, self.bias_init

    def init(key, shape, dtype=jnp.float32):
      return base(key, shape, dtype).at[h:2 * h].set(1)  # Blocks [i, f, g, o].

    return init

  @nn.nowrap
  def step_forward(self, rdot, carry, xp):
    """Residuals: the activated gates and tanh(c_t), (i, f, g, o, tanh_c), each [..., H]."""
    c, h = carry
    z = xp + rdot(h)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    i, f, g, o = nn.sigmoid(i), nn.sigmoid(f), jnp.tanh(g), nn.sigmoid(o)
    c = f * c + i * g
    tanh_c = jnp.tanh(c)
    h = o * tanh_c
    return (c, h), h, (i, f, g, o, tanh_c)

  @nn.nowrap
  def step_backward(self, rdot_t, carry, residuals, d_carry, dy):
    c, h = carry
    d_c, d_h = d_carry
    i, f, g, o, tanh_c = residuals
    d_h = d_h + dy
    d_c = d_c + (d_h * o) * (1 - tanh_c * tanh_c)
    d_z = jnp.concatenate([(d_c * g) * (i * (1 - i)), (d_c * c) * (f * (1 - f)),
                           (d_c * i) * (1 - g * g), (d_h * tanh_c) * (o * (1 - o))], axis=-1)
    return (d_c * f, rdot_t(h, d_z)), d_z

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """Zero (c, h), each [..., H], for inputs of shape [..., F]."""
    h = super().initialize_carry(rng, input_shape)
    return h, h

  @nn.nowrap
  def hidden_state(self, carry):
    return carry[1]

  @nn.nowrap
  def with_hidden_state(self, carry, h):
    return carry[0], h


class GRUCell(RecurrentCell):
  """GRU with reset gate r, update gate z and candidate n (gate blocks [r, z, n]).

  With x_r, x_z, x_n the blocks of x_t W_x + b:
    r = sigmoid(x_r + h U_r [+ b_hr]),  z = sigmoid(x_z + h U_z [+ b_hz])
    reset_after=False (Cho et al. 2014):  n = tanh(x_n + (r * h) U_n [+ b_hn])
    reset_after=True (cuDNN/PyTorch):     n = tanh(x_n + r * (h U_n + b_hn))
    h_t = (1 - z) * n + z * h
  With reset_after=True the recurrent bias always exists (when use_bias): it sits inside
  the reset product, which is why PyTorch's GRU has two bias vectors.

  Attributes (besides RecurrentCell's):
    reset_after: which of the two forms above.
  """

  num_gates: ClassVar[int] = 3
  reset_after: bool = True

  def _has_recurrent_bias(self) -> bool:
    return self.use_bias and (self.recurrent_bias or self.reset_after)

  @nn.nowrap
  def step_forward(self, rdot, h, xp):
    """Residuals: (r, z, n), each [..., H], and with reset_after also h U_n + b_hn."""
    x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
    if self.reset_after:
      p_r, p_z, p_n = jnp.split(rdot(h), 3, axis=-1)
      r, z = nn.sigmoid(x_r + p_r), nn.sigmoid(x_z + p_z)
      n = jnp.tanh(x_n + r * p_n)
      residuals = (r, z, n, p_n)
    else:
      p_r, p_z = jnp.split(rdot(h, slice(0, 2)), 2, axis=-1)
      r, z = nn.sigmoid(x_r + p_r), nn.sigmoid(x_z + p_z)
      n = jnp.tanh(x_n + rdot(r * h, slice(2, 3)))
      residuals = (r, z, n)
    h = (1 - z) * n + z * h
    return h, h, residuals

  @nn.nowrap
  def step_backward(self, rdot_t, h, residuals, d_carry, dy):
    r, z, n = residuals[:3]
    d_h = d_carry + dy
    d_n = (d_h * (1 - z)) * (1 - n * n)  # Cotangents of the pre-activations.
    d_z = (d_h * (h - n)) * (z * (1 - z))
    d_h_in = d_h * z
    if self.reset_after:
      d_r = (d_n * residuals[3]) * (r * (1 - r))
      d_h_in = d_h_in + rdot_t(h, jnp.concatenate([d_r, d_z, d_n * r], axis=-1))
    else:
      d_rh = rdot_t(r * h, d_n, slice(2, 3))
      d_r = (d_rh * h) * (r * (1 - r))
      d_h_in = (d_h_in + d_rh * r
                + rdot_t(h, jnp.concatenate([d_r, d_z], axis=-1), slice(0, 2)))
    return d_h_in, jnp.concatenate([d_r, d_z, d_n], axis=-1)


CELLS: Mapping[str, type[RecurrentCell]] = {
    "simple": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell,
}


def make_cell(cell: str, hidden_size: int, **kwargs) -> RecurrentCell:
  """Builds a cell from its name ("simple", "lstm" or "gru") and hidden size.

  Raises:
    ValueError: unknown cell name (the message lists the allowed ones).
  """
  if cell not in CELLS:
    raise ValueError(f"cell={cell!r}; allowed: {', '.join(sorted(CELLS))}")
  return CELLS[cell](hidden_size, **kwargs)


# ----------------------------------------------------------------------------- the driver


def _finish_step(cell, carry, new_carry, y, mask_t, delta_t):
  """The driver's concerns after a cell step: perturbation, dtype, freezing past the length."""
  if delta_t is not None:  # Zero perturbation of h_t whose gradient is dL/dh_t.
    y = y + delta_t
    new_carry = cell.with_hidden_state(new_carry, cell.hidden_state(new_carry) + delta_t)
  new_carry = jax.tree.map(lambda new, old: new.astype(old.dtype), new_carry, carry)
  if mask_t is not None:
    keep = mask_t[:, None]  # [B, 1]
    new_carry = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_carry, carry)
    y = jnp.where(keep, y, jnp.zeros_like(y))
  return new_carry, y


def _masked_step(cell, rdot, carry, xp_t, mask_t, delta_t):
  """cell.step followed by `_finish_step`."""
  new_carry, y = cell.step(rdot, carry, xp_t)
  return _finish_step(cell, carry, new_carry, y, mask_t, delta_t)


def _has_backward_rule(cell) -> bool:
  """Whether the cell's `step_forward`/`step_backward` may stand in for `step`: only when
  it has a `step_backward` and does not override `step` (so that both describe one step)."""
  cls = type(cell)
  return cls.step is RecurrentCell.step and cls.step_backward is not RecurrentCell.step_backward


def _add_bias(xp_t, input_bias):
  """xp_t [B, G*H] plus the input bias, which the driver adds inside the time loop."""
  return xp_t if input_bias is None else xp_t + _bias_row(input_bias, xp_t.ndim)


def _scan_autodiff(cell, kernel, bias, carry, xp, input_bias, mask, delta, reverse, unroll):
  """Time loop differentiated by plain autodiff. xp [T, B, G*H] (without the input bias
  [G*H] or None) -> (carry, ys [T, B, H])."""

  def body(carry, xs):
    xp_t, mask_t, delta_t = xs
    return _masked_step(cell, _RecurrentDot(kernel, bias), carry, _add_bias(xp_t, input_bias),
                        mask_t, delta_t)

  return lax.scan(body, carry, (xp, mask, delta), reverse=reverse, unroll=unroll)


def _scan_custom_vjp(cell, kernel, bias, carry, xp, input_bias, mask, reverse, unroll):
  """Same result as `_scan_autodiff`; the backward pass accumulates no weight gradient in
  the loop, and dW = sum_t a_t^T dp_t is one matmul over all steps afterwards.

  A cell with a backward rule (`_has_backward_rule`) saves its residuals in the forward
  loop and runs `step_backward` in the backward loop; any other cell saves its recurrent
  products and is replayed under `jax.vjp`.
  """
  rule = _has_backward_rule(cell)
  columns = []  # (lo, hi) of every rdot call in a step, recorded while tracing.
  new_dtypes = []  # Dtypes of the cell's new carry before `_finish_step` casts them.
  aliases = []  # Per rdot_t call: (index of the operand among the carry leaves, dp is d_xp).

  def forward(kernel, bias, carry, xp, input_bias, mask):
    def body(carry, xs):
      xp_t, mask_t = xs
      xp_t = _add_bias(xp_t, input_bias)
      rdot = _RecurrentDot(kernel, bias)
      if rule:
        new_carry, y, saved = cell.step_forward(rdot, carry, xp_t)
        new_dtypes[:] = [a.dtype for a in jax.tree.leaves(new_carry)]
        new_carry, y = _finish_step(cell, carry, new_carry, y, mask_t, None)
      else:
        new_carry, y = _masked_step(cell, rdot, carry, xp_t, mask_t, None)
        columns[:] = rdot.columns
        saved = tuple(rdot.products)
      return new_carry, (y, carry, saved)

    carry_out, (ys, carries_in, saved) = lax.scan(
        body, carry, (xp, mask), reverse=reverse, unroll=unroll)
    return carry_out, ys, carries_in, saved

  @jax.custom_vjp
  def loop(kernel, bias, carry, xp, input_bias, mask):
    carry_out, ys, _, _ = forward(kernel, bias, carry, xp, input_bias, mask)
    return carry_out, ys

  def loop_fwd(kernel, bias, carry, xp, input_bias, mask):
    carry_out, ys, carries_in, saved = forward(kernel, bias, carry, xp, input_bias, mask)
    return (carry_out, ys), (kernel, bias, carries_in, saved, xp, input_bias, mask)

  def loop_bwd(residuals, cotangents):
    kernel, bias, carries_in, saved, xp, input_bias, mask = residuals
    d_carry_out, d_ys = cotangents
    kernel_t = kernel.T

    def replay_body(d_carry, xs):
      carry_in, saved, xp_t, mask_t, dy_t = xs

      def step(carry_in, xp_t, taps):
        rdot = _ReplayDot(kernel, bias, saved, taps)
        out = _masked_step(cell, rdot, carry_in, xp_t, mask_t, None)
        return out, tuple(rdot.operands)

      taps = tuple(jnp.zeros_like(p) for p in saved)
      xp_t = _add_bias(xp_t, input_bias)
      _, step_vjp, operands = jax.vjp(step, carry_in, xp_t, taps, has_aux=True)
      d_carry_in, d_xp_t, d_products = step_vjp((d_carry, dy_t))
      return d_carry_in, (d_xp_t, d_products, operands)

    def rule_body(d_carry, xs):
      carry_in, saved, xp_t, mask_t, dy_t = xs
      d_new, d_kept = d_carry, None
      if mask_t is not None:  # Transpose of `_finish_step`'s freezing past the length.
        keep = mask_t[:, None]  # [B, 1]
        d_new = jax.tree.map(lambda d: jnp.where(keep, d, jnp.zeros_like(d)), d_carry)
        d_kept = jax.tree.map(lambda d: jnp.where(keep, jnp.zeros_like(d), d), d_carry)
        dy_t = jnp.where(keep, dy_t, jnp.zeros_like(dy_t))
      d_new = jax.tree.unflatten(jax.tree.structure(d_new), [
          d.astype(dtype) for d, dtype in zip(jax.tree.leaves(d_new), new_dtypes, strict=True)])
      rdot_t = _RecurrentDotTranspose(kernel, bias, kernel_t)
      d_carry_in, d_xp_t = cell.step_backward(rdot_t, carry_in, saved, d_new, dy_t)
      d_carry_in = jax.tree.map(lambda d, c: d.astype(c.dtype), d_carry_in, carry_in)
      if d_kept is not None:
        d_carry_in = jax.tree.map(jnp.add, d_carry_in, d_kept)
      columns[:] = rdot_t.columns
      # An operand that is a leaf of the input carry (LSTM: h) or a product cotangent that
      # is the cotangent of xp (LSTM: d_z) is stacked already; None marks it for loop_bwd.
      carry_leaves = jax.tree.leaves(carry_in)
      aliases[:] = [(next((k for k, c in enumerate(carry_leaves) if a is c), None), dp is d_xp_t)
                    for a, dp in zip(rdot_t.operands, rdot_t.products)]
      operands = tuple(None if k is not None else a
                       for a, (k, _) in zip(rdot_t.operands, aliases))
      d_products = tuple(None if same else dp for dp, (_, same) in zip(rdot_t.products, aliases))
      return d_carry_in, (d_xp_t.astype(xp_t.dtype), d_products, operands)

    d_carry, (d_xp, d_products, operands) = lax.scan(
        rule_body if rule else replay_body, d_carry_out, (carries_in, saved, xp, mask, d_ys),
        reverse=not reverse, unroll=unroll)
    if rule:
      carry_leaves = jax.tree.leaves(carries_in)
      operands = [carry_leaves[k] if a is None else a for a, (k, _) in zip(operands, aliases)]
      d_products = [d_xp if dp is None else dp for dp in d_products]
    d_kernel = jnp.zeros_like(kernel)
    d_bias = None if bias is None else jnp.zeros_like(bias)
    for (lo, hi), a, dp in zip(columns, operands, d_products, strict=True):
      # [T*B, H]^T x [T*B, cols] -> [H, cols]: the one large matmul. Flattened to 2-D
      # first: as a 3-D einsum XLA:CPU ran it 1.4x slower (char LSTM, 512 units, B=64).
      a, dp = a.reshape(-1, a.shape[-1]), dp.reshape(-1, dp.shape[-1])
      d_kernel = d_kernel.at[:, lo:hi].add(
          lax.dot_general(a, dp, (((0,), (0,)), ((), ()))).astype(kernel.dtype))
      if bias is not None:
        d_bias = d_bias.at[lo:hi].add(dp.sum(axis=0).astype(bias.dtype))
    d_input_bias = None if input_bias is None else d_xp.sum(axis=(0, 1))
    return d_kernel, d_bias, d_carry, d_xp, d_input_bias, None

  loop.defvjp(loop_fwd, loop_bwd)
  return loop(kernel, bias, carry, xp, input_bias, mask)


def _native_lstm_applies(cell, kernel, carry, xp) -> bool:
  """Whether the time loop runs on the native LSTM kernels (`native.lstm`): an LSTMCell
  (or a subclass that keeps its step), float32 throughout, where `native.applies`."""
  cls = type(cell)
  if not (_has_backward_rule(cell) and cls.step_forward is LSTMCell.step_forward
          and cls.step_backward is LSTMCell.step_backward):
    return False
  leaves = jax.tree.leaves(carry)
  b, g = xp.shape[1:]
  return (xp.shape[0] > 0 and b > 0 and len(leaves) == 2
          and all(c.shape == (b, g // 4) for c in leaves)
          and native.applies(kernel, xp, *leaves))


def _native_lstm(kernel, bias, carry, xp, input_bias, seq_lengths, reverse):
  """The LSTM loop of `_scan_custom_vjp` on the native kernels."""
  t, b, g = xp.shape
  total_bias = jnp.zeros((g,), jnp.float32)
  for vector in (input_bias, bias):
    if vector is not None:
      total_bias = total_bias + vector.astype(jnp.float32)
  lengths = (jnp.full((b,), t, jnp.int32) if seq_lengths is None
             else seq_lengths.astype(jnp.int32))
  c, h = carry
  return native.lstm(kernel, total_bias, c, h, xp, lengths, reverse)


class RNN(nn.Module):
  """Runs any cell over batch-major sequences with `lax.scan`.

  The input projection of all T steps is one matmul before the loop; inside the loop only
  the input bias, the recurrent matmul and the gate arithmetic run. With `custom_vjp=True`
  the gradient of the recurrent weights is one matmul after the backward loop, and the
  backward loop runs the cell's `step_backward` where it has one (equal to autodiff up to
  float rounding).

  For an `LSTMCell` in float32 on one CPU device, the same loops run on native kernels
  instead of `lax.scan` (`cnnrnn.nn.native.lstm`: one call for the forward loop, one for the
  backward loop; the same function, to float32 rounding). `native.override(False)` keeps
  the scan; programs on several devices keep it too, since the SPMD partitioner cannot
  split a custom call.

  Variable lengths: with `seq_lengths`, step t of example b runs only if t < length[b];
  past it the carry is frozen (so the final carry is the one at the example's last valid
  step) and the output is zero. Padding therefore never changes a valid output. With
  `reverse=True` each sequence is processed from its own last valid step back to step 0,
  like a PyTorch packed sequence, and outputs stay in input order.

  For the gradient-flow analysis, when the 'perturbations' collection is passed to `apply`
  (or made mutable outside `init`), a zero perturbation `hidden_states` [B, T, H] is added
  to every step's hidden state; its gradient is dL/dh_t. That path uses plain autodiff.

  `custom_vjp=True` supports reverse-mode differentiation (grad, vjp) only; use
  `custom_vjp=False` for forward-mode (jvp, jacfwd) or higher-order derivatives.

  Token inputs: `rnn(ids, embedding=table)` equals `rnn(table[ids])` for ids [B, T] and a
  table [V, F]. When V < B*T the input projection is computed once per table row
  (table @ W_x, [V, G*H]) and gathered, instead of once per token: the same function,
  (equal in exact arithmetic; float32 rounding differs) at a fraction of the cost for
  small vocabularies (a character model: 65 rows against 8,192 tokens per batch).

  Attributes:
    cell: the cell (its parameters live under `cell/`).
    reverse: process sequences back to front.
    unroll: `lax.scan` unroll factor.
    return_carry: return (final carry, outputs) instead of outputs.
    custom_vjp: use the fast backward pass described above.
  """

  cell: RecurrentCell
  reverse: bool = False
  unroll: int = 1
  return_carry: bool = False
  custom_vjp: bool = True

  @nn.compact
  def __call__(self, inputs: Array, *, initial_carry: Carry | None = None,
               seq_lengths: Array | None = None, reverse: bool | None = None,
               return_carry: bool | None = None, embedding: Array | None = None):
    """Runs the cell over time.

    Args:
      inputs: [B, T, F], or [B, T] integer ids into `embedding`.
      initial_carry: the cell's carry for batch B (default zeros); pass the previous
        batch's final carry for truncated BPTT.
      seq_lengths: optional [B] integer lengths (0 <= length <= T).
      reverse: overrides the attribute.
      return_carry: overrides the attribute.
      embedding: optional [V, F] table; the inputs are then ids and step t reads
        embedding[inputs[:, t]].

    Returns:
      outputs [B, T, H], or (final carry, outputs) with return_carry.

    Raises:
      ValueError: inputs not rank 3 (rank 2 with an embedding, which must be rank 2), or
        seq_lengths not of shape [B].
    """
    reverse = self.reverse if reverse is None else reverse
    return_carry = self.return_carry if return_carry is None else return_carry
    if embedding is None and inputs.ndim != 3:
      raise ValueError(f"RNN inputs must be [batch, time, features], got shape {inputs.shape}")
    if embedding is not None and (inputs.ndim != 2 or embedding.ndim != 2
                                  or not jnp.issubdtype(inputs.dtype, jnp.integer)):
      raise ValueError(f"with an embedding, RNN inputs must be [batch, time] integer ids and "
                       f"the embedding [vocab, features], got {inputs.dtype} "
                       f"{inputs.shape} and {embedding.shape}")
    b, t = inputs.shape[:2]
    num_features = inputs.shape[-1] if embedding is None else embedding.shape[-1]
    mask = None
    if seq_lengths is not None:
      if seq_lengths.shape != (b,):
        raise ValueError(f"seq_lengths must have shape [batch]=({b},), got {seq_lengths.shape}")
      mask = jnp.arange(t)[:, None] < seq_lengths[None, :]  # [T, B]
    carry = (self.cell.initialize_carry(None, (b, num_features))
             if initial_carry is None else initial_carry)

    # Transposing the F-wide inputs (not the G*H-wide projection) keeps the projection and
    # its weight gradient plain [T*B, F] x [F, G*H] matmuls with no big transposes. The 2D
    # reshape matters: on [T, B, F], XLA:CPU transposed the [T*B, G*H] cotangent for the
    # weight gradient and ran that matmul 1.7x slower (char LSTM, 512 units, B=64).
    x = jnp.swapaxes(inputs, 0, 1).reshape(t * b, *inputs.shape[2:])  # [T*B, F] or [T*B]
    if embedding is None:
      xp = self.cell.project_inputs(x, add_bias=False)
    elif embedding.shape[0] < t * b:  # Project the table, then gather.
      xp = native.take_rows(self.cell.project_inputs(embedding, add_bias=False), x)
    else:
      xp = self.cell.project_inputs(native.take_rows(embedding, x), add_bias=False)
    xp = xp.reshape(t, b, -1)  # [T, B, G*H]
    _, input_bias = self.cell.input_weights(num_features)
    kernel, bias = self.cell.recurrent_weights()

    delta = None
    if ((self.is_mutable_collection("perturbations") and not self.is_initializing())
        or self.has_variable("perturbations", "hidden_states")):
      shape = (b, t, self.cell.features)
      delta = jnp.swapaxes(self.perturb("hidden_states", jnp.zeros(shape, xp.dtype)), 0, 1)

    if self.custom_vjp and delta is None and _native_lstm_applies(self.cell, kernel, carry, xp):
      carry, ys = _native_lstm(kernel, bias, carry, xp, input_bias, seq_lengths, reverse)
    elif self.custom_vjp and delta is None:
      carry, ys = _scan_custom_vjp(self.cell, kernel, bias, carry, xp, input_bias, mask,
                                   reverse, self.unroll)
    else:
      carry, ys = _scan_autodiff(self.cell, kernel, bias, carry, xp, input_bias, mask, delta,
                                 reverse, self.unroll)
    outputs = jnp.swapaxes(ys, 0, 1)  # [B, T, H]
    return (carry, outputs) if return_carry else outputs


class Bidirectional(nn.Module):
  """A forward and a backward `RNN` over the same inputs, outputs concatenated.

  The backward RNN is always run with reverse=True (each sequence reversed within its own
  length); its outputs are returned in input order.

  Attributes:
    forward: the forward-in-time RNN.
    backward: the backward-in-time RNN.
    return_carry: return ((forward carry, backward carry), outputs).
  """

  forward: RNN
  backward: RNN
  return_carry: bool = False

  def __call__(self, inputs: Array, *, initial_carry: tuple[Carry, Carry] | None = None,
               seq_lengths: Array | None = None, return_carry: bool | None = None,
               embedding: Array | None = None):
    """Args: inputs [B, T, F] (or [B, T] ids into `embedding`, as for `RNN`);
    initial_carry (forward, backward) or None; seq_lengths [B].

    Returns: outputs [B, T, H_fwd + H_bwd], or ((carry_fwd, carry_bwd), outputs).
    """
    return_carry = self.return_carry if return_carry is None else return_carry
    init_f, init_b = (None, None) if initial_carry is None else initial_carry
    carry_f, out_f = self.forward(inputs, initial_carry=init_f, seq_lengths=seq_lengths,
                                  reverse=False, return_carry=True, embedding=embedding)
    carry_b, out_b = self.backward(inputs, initial_carry=init_b, seq_lengths=seq_lengths,
                                   reverse=True, return_carry=True, embedding=embedding)
    outputs = jnp.concatenate([out_f, out_b], axis=-1)
    return ((carry_f, carry_b), outputs) if return_carry else outputs


class StackedRNN(nn.Module):
  """num_layers recurrent layers (optionally bidirectional) with dropout between layers.

  Dropout follows Zaremba et al. 2014: only on the non-recurrent connections, here the
  inputs of layers 1..L-1 (callers add it before the first and after the last layer when
  they want it there, as `RNNLM` does).

  The carry is a tuple with one entry per layer: the cell's carry (h [B, H], or (c, h) for
  LSTM), or (forward carry, backward carry) when bidirectional. `zero_carry(B)` builds it.

  Parameters live under `layer{i}/cell/...` (or `layer{i}/forward/cell/...` and
  `layer{i}/backward/cell/...`).

  Attributes:
    cell: "simple", "lstm" or "gru".
    hidden_size: H of every layer.
    num_layers: number of layers.
    bidirectional: each layer reads both directions; outputs are [B, T, 2H].
    dropout: dropout rate between layers (applied when train=True).
    unroll: `lax.scan` unroll factor.
    custom_vjp: use the driver's fast backward pass.
    cell_kwargs: extra cell attributes (e.g. {"reset_after": False}, {"use_bias": False},
      initializers).
    dtype: compute dtype.
    param_dtype: parameter storage dtype.
  """

  cell: str = "lstm"
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  unroll: int = 1
  custom_vjp: bool = True
  cell_kwargs: Mapping[str, Any] | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.nowrap
  def _make_cell(self) -> RecurrentCell:
    # parent=None: the RNN that receives the cell adopts it, so its params sit under cell/.
    return make_cell(self.cell, self.hidden_size, parent=None, dtype=self.dtype,
                     param_dtype=self.param_dtype, **dict(self.cell_kwargs or {}))

  @nn.nowrap
  def zero_carry(self, batch_size: int) -> tuple[Carry, ...]:
    """The all-zero carry for a batch (usable on the unbound module)."""
    cell = make_cell(self.cell, self.hidden_size, parent=None, dtype=self.dtype,
                     **dict(self.cell_kwargs or {}))
    one = cell.initialize_carry(None, (batch_size, 1))
    return tuple((one, one) if self.bidirectional else one for _ in range(self.num_layers))

  @nn.compact
  def __call__(self, inputs: Array, *, seq_lengths: Array | None = None,
               initial_carry: tuple[Carry, ...] | None = None, train: bool = False,
               embedding: Array | None = None) -> tuple[Array, tuple[Carry, ...]]:
    """Runs all layers.

    Args:
      inputs: [B, T, F], or [B, T] ids into `embedding` (see `RNN`).
      seq_lengths: optional [B] lengths.
      initial_carry: a carry as returned by a previous call (or `zero_carry`), or None.
      train: enables dropout (needs a 'dropout' rng).
      embedding: optional [V, F] table read by the first layer.

    Returns:
      (outputs [B, T, H or 2H] of the last layer, final carry).

    Raises:
      ValueError: unknown cell, num_layers < 1, or an initial carry with the wrong
        number of layers.
    """
    if self.cell not in CELLS:
      raise ValueError(f"cell={self.cell!r}; allowed: {', '.join(sorted(CELLS))}")
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
    if initial_carry is not None and len(initial_carry) != self.num_layers:
      raise ValueError(f"initial_carry has {len(initial_carry)} layers, expected "
                       f"{self.num_layers}")
    x, carries = inputs, []
    for i in range(self.num_layers):
      if i > 0 and self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      rnn = functools.partial(RNN, unroll=self.unroll, custom_vjp=self.custom_vjp)
      if self.bidirectional:
        layer = Bidirectional(rnn(self._make_cell(), parent=None),
                              rnn(self._make_cell(), parent=None), name=f"layer{i}")
      else:
        layer = rnn(self._make_cell(), name=f"layer{i}")
      carry, x = layer(x, initial_carry=None if initial_carry is None else initial_carry[i],
                       seq_lengths=seq_lengths, return_carry=True,
                       embedding=embedding if i == 0 else None)
      carries.append(carry)
    return x, tuple(carries)
