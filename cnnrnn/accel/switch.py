"""Switching acceleration on and off: `mode`, `accelerate`, `resolve`.

The substitution goes through Flax's own mechanism, `flax.linen.intercept_methods`: while a
mode other than "xla" is active, an interceptor gives every `flax.linen.Conv` that has no
convolution of its own (`conv_general_dilated` and `conv_general_dilated_cls` unset) the
accelerated `conv_general_dilated` hook, and computes `cnnrnn.nn.BatchNorm.batch_normalize`
(training-mode normalisation) with `batch_norm_train`. `flax.linen.BatchNorm` in training
mode over the last axis (no mask, no axis_index_groups) runs as `cnnrnn.nn.BatchNorm` on the
same variables, so it is accelerated too. Every `cnnrnn.nn.RNN` without a time loop of its
own gets the `time_loop` hook of recurrent.py (the LSTM loop on the native kernels). Every
`flax.linen.Dense` and `flax.linen.DenseGeneral` without a product of its own
(`dot_general` and `dot_general_cls` unset) gets the `dot_general` hook of products.py, and
every `cnnrnn.nn.MultiHeadAttention` without einsums of its own gets products.py's `einsum`
for its two attention products. The active mode is a
`jax.make_user_context`, part of `jax.jit`'s cache key.
"""

from collections.abc import Callable, Iterator
import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnrnn import nn as cnn
from cnnrnn.accel import batch_norm
from cnnrnn.accel import conv
from cnnrnn.accel import native
from cnnrnn.accel import primitives
from cnnrnn.accel import products
from cnnrnn.accel import recurrent

MODES = ("auto", "xla", "cpu_native")
_active = jax.make_user_context("xla")  # The resolved mode of what is being traced.


def validate(name: str, field: str = "accel") -> None:
  """Raises ValueError naming `field` unless `name` is one of `MODES`."""
  if name not in MODES:
    raise ValueError(f"{field}={name!r}; allowed: {', '.join(MODES)}")


def resolve(name: str) -> str:
  """The mode `name` stands for here: "xla" or "cpu_native" ("auto" decided now).

  "auto" is "cpu_native" when JAX's default backend is the CPU with one device and the
  native kernels are available (building them if needed), else "xla".
  """
  validate(name)
  if name != "auto":
    return name
  if jax.default_backend() == "cpu" and jax.device_count() == 1 and native.available()[0]:
    return "cpu_native"
  return "xla"


def current_mode() -> str:
  """The resolved mode of functions traced now ("xla" outside any `mode`)."""
  return _active.value


@contextlib.contextmanager
def mode(name: str) -> Iterator[str]:
  """Within the block, functions traced use the implementations of mode `name`.

  Args:
    name: one of `MODES`; "auto" is resolved on entry (`resolve`).

  Yields:
    The resolved mode. An inner `mode("xla")` switches an outer one off.

  Example:

    >>> from cnnrnn import accel
    >>> with accel.mode("xla") as resolved:  # XLA's own operations inside the block
    ...   print(resolved)
    xla
  """
  resolved = resolve(name)
  with _active(resolved), nn.intercept_methods(_intercept):
    yield resolved


def accelerate(fn: Callable, mode: str = "auto") -> Callable:
  """`fn`, traced with the implementations of `mode` whenever it is called or traced.

  `jax.jit(accelerate(loss))` bakes the choice into what it traces; unrelated functions
  are unaffected.

  Args:
    fn: any function (a loss, a train step, `model.apply`, ...).
    mode: one of `MODES`; "auto" is resolved once, here (`resolve`).

  Returns:
    A function with `fn`'s signature and results (to float32 rounding).

  Example:

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn import accel, models
    >>> model = models.create("lenet5", num_classes=10)
    >>> x = jnp.ones((2, 32, 32, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> forward = jax.jit(accel.accelerate(lambda v, x: model.apply(v, x, train=False)))
    >>> forward(variables, x).shape  # the same function, on the fastest kernels available
    (2, 10)
  """
  resolved = resolve(mode)

  @functools.wraps(fn)
  def accelerated(*args, **kwargs):
    with _active(resolved), nn.intercept_methods(_intercept):
      return fn(*args, **kwargs)

  return accelerated


def _intercept(next_fun, args, kwargs, context):
  if _active.value != "cpu_native":
    return next_fun(*args, **kwargs)
  module, method = context.module, context.method_name
  if (method == "__call__" and isinstance(module, nn.Conv) and module.conv_general_dilated is None
      and module.conv_general_dilated_cls is None):
    # The same module on the same variables, with the accelerated convolution hook.
    fast = module.clone(parent=module.scope, conv_general_dilated=conv.conv_general_dilated)
    return fast(*args, **kwargs)
  if method == "__call__" and isinstance(module, cnn.RNN) and module.time_loop is None:
    # The same RNN (same cell, same variables) with the accelerated time-loop hook.
    fast = module.clone(parent=module.scope, time_loop=recurrent.time_loop)
    return fast(*args, **kwargs)
  if (method == "__call__" and isinstance(module, (nn.Dense, nn.DenseGeneral))
      and module.dot_general is None and module.dot_general_cls is None):
    # The same layer on the same variables, with the accelerated product hook.
    fast = module.clone(parent=module.scope, dot_general=products.dot_general)
    return fast(*args, **kwargs)
  if (method == "__call__" and isinstance(module, cnn.MultiHeadAttention)
      and module.qk_attn_weights_einsum_cls is None
      and module.attn_weights_value_einsum_cls is None):
    fast = module.clone(parent=module.scope, qk_attn_weights_einsum_cls=products.einsum_cls,
                        attn_weights_value_einsum_cls=products.einsum_cls)
    return fast(*args, **kwargs)
  if method == "__call__" and isinstance(module, nn.BatchNorm):
    ours = _as_cnnrnn_batch_norm(module, args, kwargs)
    if ours is not None:
      return ours(args[0])
  if method == "batch_normalize" and isinstance(module, cnn.BatchNorm):
    x, scale, bias = jax.tree.leaves((args, kwargs))
    if ((module.axis_name is None or module.is_initializing())
        and all(a.dtype == jnp.float32 for a in (x, scale, bias))
        and not primitives.explicitly_sharded(x, scale, bias)):
      return batch_norm.batch_norm_train(x, scale, bias, module.epsilon)
  return next_fun(*args, **kwargs)


def _as_cnnrnn_batch_norm(module: nn.BatchNorm, args, kwargs) -> cnn.BatchNorm | None:
  """`cnnrnn.nn.BatchNorm` on the scope of Flax's `module` in training mode, if it has the
  same variables and results there (else None: Flax's own code runs)."""
  x = args[0]
  use_running_average = args[1] if len(args) > 1 else kwargs.get("use_running_average")
  if module.use_running_average is not None and use_running_average is not None:
    return None  # Flax's merge_param raises the error.
  if module.use_running_average if use_running_average is None else use_running_average:
    return None
  if (kwargs.get("mask") is not None or module.axis not in (-1, x.ndim - 1)
      or module.axis_index_groups is not None or not module.force_float32_reductions):
    return None
  return cnn.BatchNorm(use_running_average=False, momentum=module.momentum,
                       epsilon=module.epsilon, dtype=module.dtype,
                       param_dtype=module.param_dtype, use_bias=module.use_bias,
                       use_scale=module.use_scale, bias_init=module.bias_init,
                       scale_init=module.scale_init, axis_name=module.axis_name,
                       parent=module.scope)
