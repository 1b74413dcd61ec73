"""Acceleration switched on: the model zoo computes the same and every transformation works.

For lenet5, a ConvStack with BatchNorm and cifar_resnet20 (tiny inputs; cifar_resnet8, its
blocks with one per stage, for the costlier transformations): outputs and
gradients with "cpu_native" equal XLA's; jvp, jacfwd, Hessian-vector products, vmap,
nn.remat and jax.export work with it on (export falls back to XLA's operations); on one
device the kernels do run; a batch-sharded jit over 8 devices keeps the batch sharded; and
nothing compiles C++ while tracing.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import accel
from cnnrnn import models
from cnnrnn import nn as cnn
from cnnrnn.accel import native
from cnnrnn.models.resnet import cifar_resnet
from cnnrnn.train import sharding

MODELS = {
    "lenet5": (lambda: models.create("lenet5"), (2, 32, 32, 1)),
    "conv_stack": (lambda: models.create("conv_stack", features=(4, 8), dense=(16,),
                                         batch_norm=True), (2, 8, 8, 3)),
    "cifar_resnet20": (lambda: models.create("cifar_resnet20"), (2, 8, 8, 3)),
    # ResNet-20's blocks with one per stage (not in the registry): faster to compile.
    "cifar_resnet8": (lambda: cifar_resnet(8)(), (2, 8, 8, 3)),
}
SMALL = ["lenet5", "conv_stack", "cifar_resnet8"]


def _setup(name, batch=None, seed=0):
  make, shape = MODELS[name]
  model = make()
  shape = (batch or shape[0], *shape[1:])
  x = jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))
  variables = model.init(jax.random.key(0), x)

  def apply(params, x):  # Training mode: batch statistics where there is BatchNorm.
    logits, _ = model.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
    return logits

  def loss(params, x):
    logits = apply(params, x)
    return jnp.sum(jnp.sin(logits) * jnp.linspace(0.5, 1.5, logits.size).reshape(logits.shape))

  return variables["params"], x, apply, loss


def _close(a, b, tol=1e-4):
  """Equal to float32 rounding, in L2 norm per leaf.

  A ReLU input within rounding of zero may flip and change single entries of a gradient by
  O(1): with seed 0 and a batch of 8, one does in cifar_resnet8 (its gradients then differ
  by 1.7% from XLA's, and by 1e-6 when the input is scaled by 1.001); the inputs below avoid
  such ties.
  """
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert float(jnp.linalg.norm(u - v)) <= tol * (float(jnp.linalg.norm(v)) + 1e-6)


def _on(fn):
  return jax.jit(accel.accelerate(fn, "cpu_native"))


@pytest.mark.parametrize("name", ["lenet5", "conv_stack", "cifar_resnet20"])
@pytest.mark.slow
def test_outputs_and_gradients_equal_xla_and_the_kernels_run(name):
  params, x, apply, loss = _setup(name)
  both = lambda p, x: (apply(p, x), jax.value_and_grad(loss)(p, x))
  on = _on(both).lower(params, x).compile()
  off = jax.jit(both).lower(params, x).compile()
  _close(on(params, x), off(params, x))
  if native.available()[0]:  # One device (this jit is not sharded): the kernels run.
    assert "cnnrnn_conv2d_fwd" in on.as_text() and "cnnrnn_conv2d_dw" in on.as_text()
    assert ("cnnrnn_channel_sums" in on.as_text()) == (name != "lenet5")
  assert "cnnrnn_" not in off.as_text()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.slow
def test_forward_mode_hessians_and_vmap_with_acceleration_on(name):
  params, x, apply, loss = _setup(name)
  tangent = jax.tree.map(lambda p: jnp.cos(p) * 0.1, params)
  groups = jnp.stack([x, 2 * x])  # Two batches, each with its own batch statistics.

  def transformed(p, t):
    return {
        "jvp": jax.jvp(lambda p: apply(p, x), (p,), (t,)),
        "hvp": jax.jvp(jax.grad(lambda p: loss(p, x)), (p,), (t,))[1],
        "jacfwd": jax.jacfwd(lambda x: apply(p, x))(x[:1]),
        "vmap": jax.vmap(apply, (None, 0))(p, groups),
    }

  on, off = _on(transformed)(params, tangent), jax.jit(transformed)(params, tangent)
  for key in on:
    _close(on[key], off[key], 1e-3 if key == "hvp" else 1e-4)


class _RematBlocks(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    block = nn.remat(cnn.BasicBlock, static_argnums=(2,))  # train, positional
    x = block(8, 1, name="block0")(x, train)
    return block(8, 2, shortcut="pad", name="block1")(x, train)


@pytest.mark.slow
def test_remat_of_a_residual_block():
  model = _RematBlocks()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 8), np.float32))
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    y, _ = model.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  grad = jax.grad(loss)
  assert "remat" in str(jax.make_jaxpr(accel.accelerate(grad, "cpu_native"))(variables["params"]))
  _close(_on(grad)(variables["params"]), jax.jit(grad)(variables["params"]))


@pytest.mark.skipif(not native.available()[0], reason="native kernels unavailable")
@pytest.mark.slow
def test_shard_map_runs_the_kernels_per_shard():
  params, x, _, loss = _setup("conv_stack", batch=8)
  mesh = sharding.make_mesh((("data", -1),))
  spec = jax.sharding.PartitionSpec
  # Each device's loss on its own shard (its own batch statistics); as for any JAX function
  # in shard_map, the gradient w.r.t. the replicated parameters sums over the shards.
  per_shard = jax.shard_map(jax.grad(loss), mesh=mesh,
                            in_specs=(spec(), spec("data")), out_specs=spec())
  xs = jax.device_put(x, sharding.batch_sharding(mesh))
  text = _on(per_shard).lower(params, xs).compile().as_text()
  assert "cnnrnn_conv2d_dw" in text and "cnnrnn_channel_sums" in text
  want = sum(jax.tree.leaves(jax.grad(loss)(params, x[i:i + 1]))[0] for i in range(8))
  _close(jax.tree.leaves(_on(per_shard)(params, xs))[0], want)


def test_tracing_compiles_nothing(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("the native kernels were built or loaded while tracing")

  monkeypatch.setattr(native, "available", fail)
  monkeypatch.setattr(native, "compile_library", fail)
  model = models.create("cifar_resnet20")
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  with accel.mode("cpu_native"):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]))(
        variables, x)
  assert "cnnrnn_conv" in str(jaxpr) and "cnnrnn_moments" in str(jaxpr)


def test_modes_are_validated_scoped_and_part_of_the_jit_key():
  with pytest.raises(ValueError, match=r"accel='gpu'; allowed: auto, xla, cpu_native"):
    accel.mode("gpu").__enter__()
  assert accel.resolve("auto") == "xla"  # 8 devices in this process
  conv = lambda: str(jax.make_jaxpr(lambda x: cnn.Conv(4, (3, 3)).init_with_output(
      jax.random.key(0), x))(jnp.ones((1, 5, 5, 2))))
  assert accel.current_mode() == "xla" and "cnnrnn_conv" not in conv()
  with accel.mode("cpu_native"):
    assert accel.current_mode() == "cpu_native" and "cnnrnn_conv" in conv()
    with accel.mode("xla"):
      assert "cnnrnn_conv" not in conv()
  # The mode is part of jit's cache key: a function first traced inside a mode is traced
  # again outside it.
  layer = cnn.Conv(4, (3, 3))
  x = jnp.ones((1, 5, 5, 2))
  variables = layer.init(jax.random.key(0), x)
  apply = jax.jit(layer.apply)
  with accel.mode("cpu_native"):
    inside = apply.lower(variables, x).as_text()
  outside = apply.lower(variables, x).as_text()
  if native.available()[0]:
    assert "cnnrnn_conv2d_fwd" in inside
  assert "cnnrnn_conv2d_fwd" not in outside


_ONE_DEVICE = """
import jax, jax.numpy as jnp
from cnnrnn import accel, models
from cnnrnn.accel import native
ok, why = native.available()
print("available", ok, why)
print("auto", accel.resolve("auto"))
model = models.create("conv_stack", features=(4,), dense=(), batch_norm=True)
x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
v = model.init(jax.random.key(0), x)
f = lambda v, x: model.apply(v, x, True, mutable=["batch_stats"])[0]
print("custom call", "cnnrnn_" in jax.jit(accel.accelerate(f, "cpu_native")).lower(v, x).as_text())
on = jax.jit(accel.accelerate(f, "cpu_native"))(v, x)
print("same", float(jnp.abs(on - f(v, x)).max()) < 1e-5)
"""


def _one_device(**env):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **env)
  out = subprocess.run([sys.executable, "-c", _ONE_DEVICE], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  return out.stdout, out.stderr


@pytest.mark.slow
def test_auto_on_one_cpu_device_and_fallbacks(tmp_path):
  if native.available()[0]:
    stdout, _ = _one_device()
    assert "auto cpu_native" in stdout and "custom call True" in stdout and "same True" in stdout
  # Disabled, or a compiler that fails (in a fresh cache, which says it compiles): XLA's
  # operations, the same numbers.
  stdout, _ = _one_device(CNNRNN_NATIVE="0")
  assert "CNNRNN_NATIVE" in stdout and "auto xla" in stdout and "custom call False" in stdout
  assert "same True" in stdout
  # A fresh cache compiles once where the CPU has an instruction set the kernels are built
  # for, and not at all where it has none.
  stdout, stderr = _one_device(CXX="false", CNNRNN_CACHE_DIR=str(tmp_path))
  assert "available False" in stdout and "auto xla" in stdout and "custom call False" in stdout
  compiles = 1 if native.cpu_isa() is not None else 0
  assert "same True" in stdout and stderr.count("compiling the native CPU kernels") == compiles
  # A CPU with none of them (forced): XLA's operations, one reason, nothing compiled.
  stdout, stderr = _one_device(CNNRNN_NATIVE_MAX_ISA="none", CNNRNN_CACHE_DIR=str(tmp_path / "n"))
  assert "available False the CPU has none of the instruction sets" in stdout
  assert "auto xla" in stdout and "custom call False" in stdout and "same True" in stdout
  assert "compiling the native CPU kernels" not in stderr


def test_max_isa_is_validated(monkeypatch):
  monkeypatch.setenv("CNNRNN_NATIVE_MAX_ISA", "sse9")
  with pytest.raises(ValueError, match=r"CNNRNN_NATIVE_MAX_ISA='sse9'; allowed: .*none"):
    native.cpu_isa()
  monkeypatch.setenv("CNNRNN_NATIVE_MAX_ISA", "none")
  assert native.cpu_isa() is None
