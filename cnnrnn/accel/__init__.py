"""Hardware-specific speed, switched on explicitly: the one seam between cnnrnn and its kernels.

No layer or model of cnnrnn imports this package. Acceleration substitutes faster
implementations for Flax's own operations while a function is traced:

    loss = cnnrnn.accel.accelerate(loss, mode="cpu_native")
    grads = jax.jit(jax.grad(loss))(params, batch)  # traced with the native CPU kernels

    with cnnrnn.accel.mode("cpu_native"):
      step = jax.jit(train_step).lower(state, batch).compile()  # traced inside: accelerated

Modes (`MODES`):

- "xla": nothing substituted (what a Flax model computes without cnnrnn.accel).
- "cpu_native": every `flax.linen.Conv` (Flax's own and `cnnrnn.nn.Conv`, which is Flax's)
  whose convolution the native kernels compute, and `cnnrnn.nn.BatchNorm` and
  `flax.linen.BatchNorm` (last axis, no mask) in training mode, are traced as primitives of
  this package (conv.py, batch_norm.py), and so is the time loop of `cnnrnn.nn.RNN` over a
  `cnnrnn.nn.LSTMCell` (float32, no `seq_lengths`; recurrent.py). The products of every
  `flax.linen.Dense` and `flax.linen.DenseGeneral` (float32, contracting the trailing
  axes) and the two attention products of `cnnrnn.nn.MultiHeadAttention` are traced as the
  matrix-product primitive of products.py, whose reverse-mode products with a transposed left
  operand (weight gradients X^T dY, the attention's dK and dV) and whose batched products
  (the attention's Q K^T, P V and their gradients) run on a native kernel.
- "auto": "cpu_native" when JAX computes on the CPU with one device and the kernels are
  available (this builds them: one line says so), else "xla"; decided once, by the caller
  (`resolve`), when `accelerate` or `mode` is called, not inside the layers.

What runs: a primitive means its XLA reference and lowers to the native kernel only where
that is the same computation on this machine: CPU lowering, float32, a program on one
device or inside `shard_map` (per shard), not for `jax.export`, and kernels that build
here. Elsewhere it lowers to XLA's operations, with the same numbers to float32 rounding.
The primitives have jvp, transpose and batching rules: `grad`, `jvp`/`jacfwd`, Hessians,
`vmap`, `jax.checkpoint`/`nn.remat`, `jax.export` and sharded `jit` all work with
acceleration on.

Scope: the substitution applies to functions *traced* while a mode is active (`jax.jit`
keys its cache on the mode, so a function jitted inside and called outside is traced
again). Nothing is compiled in C++ at import or while tracing; the kernels are built the
first time an accelerated program is lowered (or by `resolve("auto")`).
"""

from cnnrnn.accel.batch_norm import batch_norm_train
from cnnrnn.accel.conv import conv2d, conv_general_dilated
from cnnrnn.accel.products import dot_general, einsum, matmul
from cnnrnn.accel.native import available
from cnnrnn.accel.recurrent import time_loop
from cnnrnn.accel.switch import MODES, accelerate, current_mode, mode, resolve, validate

__all__ = ["MODES", "accelerate", "available", "batch_norm_train", "conv2d",
           "conv_general_dilated", "current_mode", "dot_general", "einsum", "matmul", "mode",
           "resolve", "time_loop", "validate"]
