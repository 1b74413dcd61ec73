"""Recurrent cells: Elman (`SimpleRNNCell`), `LSTMCell` and `GRUCell`.

(One module, a little over 450 lines: the three cells share their base class and the
fast path's protocol, and each cell's forward and tangent rules sit beside its gate
equations and its docstring example.)

Each cell is a Flax recurrent cell: `cell(carry, x_t) -> (carry, y_t)`,
`initialize_carry(rng, input_shape)` and `num_feature_axes`, so it runs in
`flax.linen.RNN` as well as in `cnnrnn.nn.RNN`, and Flax's own cells run in
`cnnrnn.nn.RNN`.

A cnnrnn cell also *declares a fast path* for the driver: the same computation split so
that work can leave the time loop.

  xp = x @ W_x                                 # input projection of all T steps: one matmul
  carry, y_t, res = cell.step_forward(rdot, carry, xp_t + b)    # the rest, in the loop
  d_carry, d_y = cell.step_tangent(rdot_t, carry, res, d_carry, d_xp_t)   # its JVP

`step_forward` touches the recurrent weights only through `rdot(a, gates)`, which returns
`a @ recurrent_kernel[:, gates] + recurrent_bias[gates]` (gates: a slice of gate blocks),
and returns residuals (e.g. the activated gates). `step_tangent` is the step's Jacobian-
vector product written by hand from those residuals: linear in the tangents, it calls
`rdot_t(da, gates)` once for each `rdot(a, gates)` call of the forward step, which returns
`da @ recurrent_kernel[:, gates]` plus the tangent of the weights' contribution,
`a @ d_kernel[:, gates] + d_bias[gates]`. The driver computes that second part for all
steps at once, outside the loop (`cnnrnn.nn.recurrence`), which is what makes reverse mode
fast: transposed, it is one [H, T*B] x [T*B, G*H] matmul after the backward loop.

Parameters of a cell with hidden size H, input size F and G gate blocks:

  input/kernel       [F, G*H]   input/bias      [G*H]   (if use_bias)
  recurrent/kernel   [H, G*H]   recurrent/bias  [G*H]   (if it has a recurrent bias)

Gate blocks follow PyTorch's order, so converting `weight_ih_l0` / `weight_hh_l0` is a
transpose: LSTM [i, f, g, o]; GRU [r, z, n]; SimpleRNN one block. (Flax's own cells keep
one Dense per gate; the layouts differ, the equations do not.)

Carries: `SimpleRNNCell` and `GRUCell` carry h [..., H]; `LSTMCell` carries (c, h), as
Flax's `LSTMCell`.
"""

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Carry = Any
Initializer = Callable[..., Array]

_default_kernel_init = nn.initializers.lecun_normal()
_default_recurrent_init = nn.initializers.orthogonal()


def bias_row(bias: Array, ndim: int) -> Array:
  """[N] -> [1, ..., 1, N] so that adding it to an ndim array is an explicit broadcast."""
  return bias.reshape((1,) * (ndim - 1) + (-1,))


class RecurrentDot:
  """`rdot(a, gates)`: a @ kernel[:, cols] + bias[cols], recording each call's operand.

  The driver reads `operands` and `columns` after tracing one step (their order is the
  order of the calls); a cell only calls it.
  """

  def __init__(self, kernel: Array, bias: Array | None):
    self.kernel, self.bias = kernel, bias
    self.operands: list[Array] = []
    self.columns: list[tuple[int, int]] = []

  def cols(self, gates: slice) -> tuple[int, int]:
    """The kernel columns (lo, hi) of a contiguous slice of gate blocks."""
    width = self.kernel.shape[0]  # Every gate block is H wide.
    block = range(self.kernel.shape[1] // width)[gates]
    if block.step != 1 or len(block) == 0:
      raise ValueError(f"rdot gates must be a contiguous non-empty slice, got {gates}")
    return block.start * width, block.stop * width

  def __call__(self, a: Array, gates: slice = slice(None)) -> Array:
    lo, hi = self.cols(gates)
    p = jnp.dot(a, self.kernel[:, lo:hi])
    if self.bias is not None:
      p = p + bias_row(self.bias[lo:hi], p.ndim)
    self.operands.append(a)
    self.columns.append((lo, hi))
    return p


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
    return xp + bias_row(bias, xp.ndim) if add_bias and bias is not None else xp

  def recurrent_weights(self) -> tuple[Array, Array | None]:
    """(recurrent kernel [H, G*H], recurrent bias [G*H] or None), cast to `dtype`."""
    kernel, bias = self.recurrent()
    kernel = kernel.astype(self.dtype)
    return kernel, None if bias is None else bias.astype(self.dtype)

  @nn.nowrap  # Pure: no variable access, so it may run inside any jax transform.
  def step_forward(self, rdot: Callable[..., Array], carry: Carry,
                   xp: Array) -> tuple[Carry, Array, Any]:
    """One time step from the projected input xp [..., G*H] (input bias included).

    Args:
      rdot: `rdot(a, gates=slice(None))` -> a @ U[:, gates] (+ recurrent bias), where
        `gates` selects gate blocks; the only access to the recurrent weights.
      carry: the previous carry.
      xp: [..., G*H] projected input of this step.

    Returns:
      (new carry, output h [..., H], residuals: a pytree of arrays with leading dims [...]
      that `step_tangent` reads).
    """
    raise NotImplementedError

  @nn.nowrap
  def step_tangent(self, rdot_t: Callable[..., Array], carry: Carry, residuals: Any,
                   d_carry: Carry, d_xp: Array) -> tuple[Carry, Array]:
    """The Jacobian-vector product of `step_forward`, linear in (d_carry, d_xp).

    Args:
      rdot_t: `rdot_t(da, gates=slice(None))` -> the tangent of `rdot(a, gates)` given the
        tangent da of its operand; call it once for every `rdot` call of the forward step,
        in the same order.
      carry: the carry that `step_forward` received.
      residuals: what `step_forward` returned as residuals.
      d_carry: tangent of `carry`.
      d_xp: [..., G*H] tangent of xp.

    Returns:
      (tangent of the new carry, tangent of the output [..., H]).
    """
    raise NotImplementedError

  @nn.nowrap
  def products_add_to_inputs(self) -> bool:
    """Whether every `rdot` product is added, unchanged, to the same columns of xp (true
    for the Elman cell, the LSTM and Cho's GRU; the driver then folds the weights' tangent
    into d_xp instead of passing it through the loop separately)."""
    return True

  def __call__(self, carry: Carry, x: Array) -> tuple[Carry, Array]:
    """One time step.

    Args:
      carry: the previous carry (see `initialize_carry`).
      x: [..., F] inputs of this step.

    Returns:
      (new carry, output [..., H]).
    """
    new_carry, y, _ = self.step_forward(RecurrentDot(*self.recurrent_weights()), carry,
                                        self.project_inputs(x))
    return new_carry, y

  @nn.nowrap
  def initialize_carry(self, rng: Any, input_shape: tuple[int, ...]) -> Carry:
    """Zero carry for inputs of shape [..., F] (rng unused: carries start at zero; the
    argument keeps Flax's signature)."""
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

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn.nn import SimpleRNNCell
    >>> cell = SimpleRNNCell(features=8)
    >>> x = jnp.ones((2, 3))  # one step [B, F]
    >>> h = cell.initialize_carry(jax.random.key(0), x.shape)  # [B, H]
    >>> variables = cell.init(jax.random.key(1), h, x)
    >>> h, y = cell.apply(variables, h, x)
    >>> y.shape
    (2, 8)

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
  def step_tangent(self, rdot_t, carry, residuals, d_carry, d_xp):
    h = residuals
    d_z = d_xp + rdot_t(d_carry)
    if self.nonlinearity == "tanh":
      d_h = d_z * (1 - h * h)
    else:  # relu: h > 0 exactly where its input is.
      d_h = jnp.where(h > 0, d_z, jnp.zeros_like(d_z))
    return d_h, d_h


class LSTMCell(RecurrentCell):
  """LSTM (Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000).

  With z = x_t W_x + b + h_{t-1} W_h [+ b_h] split into gate blocks [i, f, g, o]:
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)     (the additive cell update)
    h_t = sigmoid(o) * tanh(c_t)
  The carry is (c, h).

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn.nn import LSTMCell
    >>> cell = LSTMCell(features=8)
    >>> x = jnp.ones((2, 3))  # one step [B, F]
    >>> carry = cell.initialize_carry(jax.random.key(0), x.shape)  # (c, h), each [B, H]
    >>> variables = cell.init(jax.random.key(1), carry, x)
    >>> (c, h), y = cell.apply(variables, carry, x)
    >>> c.shape, y.shape
    ((2, 8), (2, 8))

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
  def step_tangent(self, rdot_t, carry, residuals, d_carry, d_xp):
    c, _ = carry
    d_c, d_h = d_carry
    i, f, g, o, tanh_c = residuals
    d_i, d_f, d_g, d_o = jnp.split(d_xp + rdot_t(d_h), 4, axis=-1)
    d_c = ((d_f * (f * (1 - f))) * c + f * d_c
           + (d_i * (i * (1 - i))) * g + i * (d_g * (1 - g * g)))
    d_h = (d_o * (o * (1 - o))) * tanh_c + o * ((1 - tanh_c * tanh_c) * d_c)
    return (d_c, d_h), d_h

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

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn.nn import GRUCell
    >>> cell = GRUCell(features=8)
    >>> x = jnp.ones((2, 3))  # one step [B, F]
    >>> h = cell.initialize_carry(jax.random.key(0), x.shape)  # [B, H]
    >>> variables = cell.init(jax.random.key(1), h, x)
    >>> h, y = cell.apply(variables, h, x)
    >>> y.shape
    (2, 8)

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
  def step_tangent(self, rdot_t, h, residuals, d_carry, d_xp):
    r, z, n = residuals[:3]
    dx_r, dx_z, dx_n = jnp.split(d_xp, 3, axis=-1)
    if self.reset_after:
      dp_r, dp_z, dp_n = jnp.split(rdot_t(d_carry), 3, axis=-1)
      d_r = (dx_r + dp_r) * (r * (1 - r))
      d_z = (dx_z + dp_z) * (z * (1 - z))
      d_n = (dx_n + d_r * residuals[3] + r * dp_n) * (1 - n * n)
    else:
      dp_r, dp_z = jnp.split(rdot_t(d_carry, slice(0, 2)), 2, axis=-1)
      d_r = (dx_r + dp_r) * (r * (1 - r))
      d_z = (dx_z + dp_z) * (z * (1 - z))
      d_n = (dx_n + rdot_t(d_r * h + r * d_carry, slice(2, 3))) * (1 - n * n)
    d_h = (1 - z) * d_n + d_z * (h - n) + z * d_carry
    return d_h, d_h

  @nn.nowrap
  def products_add_to_inputs(self) -> bool:
    return not self.reset_after  # With reset_after, r multiplies the product h U_n + b_hn.


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


