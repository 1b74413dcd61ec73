"""Every registry model and every cnnrnn.nn layer through every JAX transformation, with
acceleration off ("xla") and on ("cpu_native"): jit, grad, vjp, jvp (checked against the
gradient), a Hessian-vector product (forward-over-reverse against reverse-over-forward),
vmap (against a loop), jax.checkpoint / nn.remat (same gradient), jax.export (serialised,
deserialised, called: same output), and on 8 fake devices a batch-sharded jit of the
gradient that keeps the activations sharded (no all-gather; the time loop runs on B/8 rows).

Models are shrunk where their family allows it (widths), so that every variant of the
registry runs in seconds; the transformations and the code paths are the full ones. The
variants of a family share every code path: one member of each family (`FULL`) goes
through every check with acceleration on, the deeper variants through jit, grad, jvp and
export. With acceleration off a model is plain JAX code, and the modes differ only in what
the seam substitutes (`Conv`, `BatchNorm`, the RNN time loop, Flax's dense layers, the
attention's products), which the layer checks put
through every transformation in both modes: in "xla" mode whole models get the quick checks
(jit, grad, jvp, export).
"""

import dataclasses
import re

import flax.linen as nn
import jax
from jax import export
from jax.sharding import Mesh
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnrnn import accel
from cnnrnn import models
from cnnrnn import nn as cnn
from cnnrnn import tasks
from cnnrnn.models import stateful
from cnnrnn.train import sharding
from cnnrnn.train import steps
from cnnrnn.train.state import TrainState

_TINY_VGG = dict(widths=(4, 4, 8, 8, 8), dropout_rate=0.0)  # Training mode for BatchNorm.
_TINY_RESNET = dict(widths=(4, 8, 8, 8), stem_width=4)
_TINY_CIFAR = dict(widths=(4, 4, 8), stem_width=4)

# name -> (kwargs, input maker(batch) -> (inputs, apply kwargs))
_IMAGE = lambda hw, c=3: (lambda b: (jax.random.normal(jax.random.key(1), (b, hw, hw, c)), {}))
_TOKENS = lambda v, t: (lambda b: (jax.random.randint(jax.random.key(1), (b, t), 0, v), {}))
_CLIPS = lambda t, hw: (lambda b: (jax.random.normal(jax.random.key(1), (b, t, hw, hw, 1)),
                                    {"seq_lengths": jnp.arange(b, dtype=jnp.int32) % t + 1}))
_CAPTION = lambda hw, v, t: (lambda b: ((
    jax.random.normal(jax.random.key(1), (b, hw, hw, 1)),
    jax.random.randint(jax.random.key(2), (b, t), 4, v)), {}))
_TRANSLATION = lambda v, s, t: (lambda b: ((
    jax.random.randint(jax.random.key(1), (b, s), 4, v),
    jax.random.randint(jax.random.key(2), (b, t), 4, v)), {}))
_SEQ = lambda t, f: (lambda b: (jax.random.normal(jax.random.key(1), (b, t, f)),
                                {"seq_lengths": jnp.arange(b, dtype=jnp.int32) % t + 1}))
_SERIES = lambda t, f: (lambda b: (jax.random.normal(jax.random.key(1), (b, t, f)), {}))

MODEL_CASES = {
    "lenet5": (dict(), _IMAGE(32, 1)),
    "conv_stack": (dict(features=(4, 8), dense=(8,), batch_norm=True), _IMAGE(8)),
    "alexnet": (dict(num_classes=5), _IMAGE(63)),
    **{f"vgg{d}{bn}": (dict(num_classes=5, **_TINY_VGG), _IMAGE(32))
       for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    # 64x64: the last stage's BatchNorm then normalises over 2x2 positions of 2 images (at
    # 32x32, over the 2 images alone: ill-conditioned enough for float32 rounding to show).
    **{f"resnet{d}": (dict(num_classes=5, **_TINY_RESNET), _IMAGE(64))
       for d in (18, 34, 50, 101, 152)},
    **{f"cifar_resnet{d}": (dict(**_TINY_CIFAR), _IMAGE(8)) for d in (20, 32, 44, 56, 110)},
    "rnn_lm": (dict(vocab_size=11, hidden_size=6, num_layers=2), _TOKENS(11, 5)),
    "vit": (dict(num_classes=5, patch_size=4, hidden_dim=8, depth=2, num_heads=2, mlp_dim=16,
                 image_size=8), _IMAGE(8)),
    # The named ViTs at a tiny width and depth (their patch size and pooling kept).
    **{name: (dict(num_classes=5, hidden_dim=8, depth=1, num_heads=2, mlp_dim=16,
                   image_size=28 if name == "vit_h14" else 32),
              _IMAGE(28 if name == "vit_h14" else 32))
       for name in ("vit_ti16", "vit_s16", "vit_b16", "vit_b32", "vit_l16", "vit_h14")},
    "transformer": (dict(variant="tiny", vocab_size=13, num_layers=1, d_model=8,
                         num_heads=2, mlp_dim=16, dropout_rate=0.0), _TRANSLATION(13, 5, 4)),
    "rnn_classifier": (dict(num_outputs=3, hidden_size=6, cell="gru", bidirectional=True),
                       _SEQ(5, 4)),
    "video_classifier": (dict(num_classes=3, hidden_size=6, bidirectional=True,
                              encoder_kwargs=dict(features=(4,), dense=(6,), batch_norm=True)),
                         _CLIPS(4, 6)),
    "captioner": (dict(vocab_size=7, embed_size=4, hidden_size=6, attention_size=4,
                       encoder_kwargs=dict(features=(4,), dense=())), _CAPTION(8, 7, 4)),
    "seq2seq": (dict(vocab_size=11, embed_dim=4, hidden_size=6, cell="gru", bidirectional=True,
                     attention="bahdanau"), _TRANSLATION(11, 5, 4)),
    "ts_fcn": (dict(num_classes=3, widths=(4, 6), kernel_sizes=(3, 2)), _SERIES(6, 2)),
    "ts_resnet": (dict(num_classes=3, widths=(4, 4), kernel_sizes=(3, 2)), _SERIES(6, 2)),
    "lstm_fcn": (dict(num_classes=3, lstm_size=4, lstm_dropout=0.0, widths=(4,),
                      kernel_sizes=(3,)), _SERIES(6, 2)),
    "segmenter": (dict(num_classes=3, decoder="unet"), _IMAGE(8)),
}

# One member of each family gets every check in cpu_native mode. resnet50 differs from
# resnet18 only in its block, BottleneckBlock, which gets every check in both modes
# (LAYER_CASES); its whole-model checks were the suite's slowest (~70 s). AlexNet, which
# has no width to shrink (61M parameters; its layers are conv_stack's and vgg11's, with a
# stride-4 convolution as in resnet18's stem), gets the quick checks with acceleration on.
FULL = {"lenet5", "conv_stack", "vgg11", "vgg11_bn", "resnet18",
        "cifar_resnet20", "rnn_lm", "rnn_classifier", "vit", "transformer",
        "video_classifier", "captioner", "seq2seq"}
COVERED = set(MODEL_CASES)


def test_every_registry_model_is_covered():
  assert set(models.names()) <= COVERED, sorted(set(models.names()) - COVERED)


def _scalar(out):
  """A scalar depending on every output leaf (logits, carries...)."""
  return sum(jnp.sum(jnp.sin(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(out))


def _as_tuple(inputs):
  return inputs if isinstance(inputs, tuple) else (inputs,)


def _loss_fn(module, extra_kwargs, train: bool):
  """(variables, inputs) -> scalar, updating nothing (batch statistics are discarded).
  `inputs` is an array or a tuple of the model's positional inputs."""

  def loss(variables, inputs):
    mutable = [k for k in variables if k != "params"] if train else False
    out = module.apply(variables, *_as_tuple(inputs), train=train, mutable=mutable,
                       **extra_kwargs)
    return _scalar(out[0] if mutable else out)

  return loss


def _tree_close(a, b, rtol, atol):
  """Leafwise: ||x - y|| <= rtol ||y|| + atol (norms over each leaf). Elementwise tolerances
  would fail on second derivatives of BatchNorm over a batch of 2, whose entries span five
  orders of magnitude and whose smallest carry the rounding of the largest."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape
    error, scale = np.linalg.norm(x - y), np.linalg.norm(y)
    assert error <= rtol * scale + atol * np.sqrt(y.size), (error, scale)


def _dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _float_tangent(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def check_transformations(loss, variables, inputs, batched_inputs, *, mode: str,
                          rtol: float = 2e-3, quick: bool = False):
  """Runs `loss(variables, inputs)` through every transformation under accel `mode`
  (`quick`: jit, grad, jvp and export only).

  All checks but export are computed by one jitted function (one compilation per model).
  """
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  f = lambda p, x: loss({"params": p, **rest}, x)
  float_x = all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(inputs))
  fx = accel.accelerate(f, mode=mode)
  v = _float_tangent(params, 3)
  tx = _float_tangent(inputs, 4) if float_x else None

  @jax.jit
  def everything(params, inputs, batched, v, tx):
    value, vjp = jax.vjp(fx, params, inputs)
    out = {"value": value, "grad": vjp(jnp.ones(()))[0],
           "jvp": jax.jvp(lambda p: fx(p, inputs), (params,), (v,))[1]}
    if quick:
      return out
    out |= {
        # Hessian-vector product, forward-over-reverse and reverse-over-forward.
        "hvp_fr": jax.jvp(lambda p: jax.grad(fx)(p, inputs), (params,), (v,))[1],
        "hvp_rf": jax.grad(lambda p: jax.jvp(lambda p: fx(p, inputs), (p,), (v,))[1])(params),
        "remat_grad": jax.grad(jax.checkpoint(fx))(params, inputs),
        "vmap": jax.vmap(lambda x: fx(params, jax.tree.map(lambda a: a[None], x)))(batched),
        "loop": jnp.stack([fx(params, jax.tree.map(lambda a: a[i:i + 1], batched))
                           for i in range(jax.tree.leaves(batched)[0].shape[0])])}
    if tx is not None:
      out["grad_x"] = jax.grad(fx, argnums=1)(params, inputs)
      out["jvp_x"] = jax.jvp(lambda x: fx(params, x), (inputs,), (tx,))[1]
      out["grad_x_dot"] = _dot(out["grad_x"], tx)
    return out

  r = everything(params, inputs, batched_inputs, v, tx)
  assert np.isfinite(r["value"])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(r["grad"]))
  # Forward mode agrees with reverse mode: <grad, v> == jvp(v), for parameters and inputs.
  np.testing.assert_allclose(r["jvp"], _dot(r["grad"], v), rtol=rtol, atol=1e-4)
  if not quick:
    _check_the_rest(r, v, tx, rtol)
  _check_export(fx, params, inputs, r["value"], rtol)


def _check_the_rest(r, v, tx, rtol):
  if tx is not None:
    np.testing.assert_allclose(r["jvp_x"], r["grad_x_dot"], rtol=rtol, atol=1e-4)
  _tree_close(r["hvp_fr"], r["hvp_rf"], 1e-2, 1e-3)
  assert any(np.abs(np.asarray(h)).max() > 0 for h in jax.tree.leaves(r["hvp_fr"]))
  np.testing.assert_allclose(r["vmap"], r["loop"], rtol=rtol, atol=1e-5)  # vmap == a loop.
  _tree_close(r["remat_grad"], r["grad"], rtol, 1e-5)  # Rematerialisation changes nothing.


def _check_export(fx, params, inputs, value, rtol):
  """Serialise, deserialise, call; portable (no custom calls of cnnrnn's kernels)."""
  exported = export.export(jax.jit(fx))(params, inputs)
  restored = export.deserialize(exported.serialize())
  np.testing.assert_allclose(restored.call(params, inputs), value, rtol=rtol, atol=1e-5)
  assert not re.search(r"custom_call\s*@cnnrnn", exported.mlir_module())


@pytest.mark.parametrize("name,mode", [
    *[(name, mode) for name in sorted(FULL) for mode in ("xla", "cpu_native")],
    *[(name, "cpu_native") for name in sorted(COVERED - FULL)]])
@pytest.mark.slow
def test_registry_model(name, mode):
  kwargs, make_inputs = MODEL_CASES[name]
  model = models.create(name, **kwargs)
  inputs, extra = make_inputs(2)
  batched, _ = make_inputs(3)
  variables = model.init(jax.random.key(0), *_as_tuple(inputs), train=False, **extra)
  has_state = len(variables) > 1  # BatchNorm: exercise training-mode statistics.
  if "seq_lengths" in extra:  # Lengths per example for the vmap check come from the batch.
    extra = {}
  loss = _loss_fn(model, extra, train=has_state)
  # In xla mode the model is plain JAX; its layers get every check in both modes.
  quick = name not in FULL or mode == "xla"
  check_transformations(loss, variables, inputs, batched, mode=mode, quick=quick)
  if quick or isinstance(inputs, tuple) or mode != "cpu_native":
    return  # The nn.remat check runs without acceleration: once per model is enough.
  # nn.remat of the whole model class, `train` positional as Flax expects.
  remat = nn.remat(type(model), static_argnums=(2,))(**{
      f.name: getattr(model, f.name) for f in dataclasses.fields(model)
      if f.name not in ("parent", "name")})
  def positional(module):  # `train` passed positionally, as nn.remat's static_argnums needs.
    mutable = [k for k in variables if k != "params"] if has_state else False

    def f(v, x):
      out = module.apply(v, x, has_state, mutable=mutable, **extra)
      return _scalar(out[0] if mutable else out)

    return f

  # Jitted: op by op, these two gradients took ~5 s longer (alexnet).
  _tree_close(jax.jit(jax.grad(positional(remat)))(variables, inputs),
              jax.jit(jax.grad(positional(model)))(variables, inputs), 2e-3, 1e-5)


# ----------------------------------------------------------------------------- layers

B, T, F, H = 2, 5, 3, 4


def _rnn_inputs(b):
  return jax.random.normal(jax.random.key(2), (b, T, F))


def _query_keys(b):
  """(queries [B, 2, F], keys [B, T, F])."""
  return (jax.random.normal(jax.random.key(3), (b, 2, F)), _rnn_inputs(b))


def _image(b, c=4, hw=6):
  return jax.random.normal(jax.random.key(2), (b, hw, hw, c))


LAYER_CASES = {
    "RNN(LSTMCell)": (lambda: cnn.RNN(cnn.LSTMCell(H)), _rnn_inputs),
    "RNN(GRUCell, reverse)": (lambda: cnn.RNN(cnn.GRUCell(H), reverse=True), _rnn_inputs),
    "RNN(SimpleRNNCell)": (lambda: cnn.RNN(cnn.SimpleRNNCell(H)), _rnn_inputs),
    "RNN(GRUCell(reset_after=False))": (
        lambda: cnn.RNN(cnn.GRUCell(H, reset_after=False)), _rnn_inputs),
    "RNN(flax LSTMCell)": (lambda: cnn.RNN(nn.LSTMCell(H)), _rnn_inputs),
    "Bidirectional": (lambda: cnn.Bidirectional(cnn.RNN(cnn.LSTMCell(H)),
                                                cnn.RNN(cnn.GRUCell(H))), _rnn_inputs),
    "StackedRNN": (lambda: cnn.StackedRNN(cell="gru", hidden_size=H, num_layers=2), _rnn_inputs),
    "Conv": (lambda: cnn.Conv(5, (3, 3), padding=((1, 1), (1, 1))), _image),
    "BatchNorm": (lambda: cnn.BatchNorm(use_running_average=False), _image),
    "ConvBN": (lambda: cnn.ConvBN(5, 3, 2), _image),
    "BasicBlock": (lambda: cnn.BasicBlock(8, 2, shortcut="pad"), _image),
    "BottleneckBlock": (lambda: cnn.BottleneckBlock(2, 2), _image),
    "MaxPool": (lambda: cnn.MaxPool((2, 2)), _image),
    "AvgPool": (lambda: cnn.AvgPool((3, 3), (2, 2), "SAME"), _image),
    "AdaptiveAvgPool": (lambda: cnn.AdaptiveAvgPool(4), _image),
    "MultiHeadAttention": (lambda: cnn.MultiHeadAttention(num_heads=2, qkv_features=4),
                           _rnn_inputs),
    "MultiHeadAttention(fused)": (lambda: cnn.MultiHeadAttention(num_heads=1, fused_qkv=True),
                                  _rnn_inputs),
    "AdditiveAttention": (lambda: cnn.AdditiveAttention(features=4), _query_keys),
    "LuongAttention(general)": (lambda: cnn.LuongAttention(score="general"), _query_keys),
    "LuongAttention(concat)": (lambda: cnn.LuongAttention(score="concat", features=4),
                               _query_keys),
    "Mlp": (lambda: cnn.Mlp(hidden_dim=6, activation="gelu"), _rnn_inputs),
    "TransformerEncoderBlock": (lambda: cnn.TransformerEncoderBlock(num_heads=1, mlp_dim=6),
                                _rnn_inputs),
    "TransformerDecoderBlock": (lambda: cnn.TransformerDecoderBlock(num_heads=1, mlp_dim=6),
                                _query_keys),
}


def _layer_call(layer, variables, x):
  """Calls a layer the way it is called in models (train mode where it has one)."""
  mutable = [k for k in variables if k != "params"]
  if isinstance(layer, (cnn.ConvBN, cnn.BasicBlock, cnn.BottleneckBlock)):
    out = layer.apply(variables, x, train=True, mutable=mutable)
  elif isinstance(layer, cnn.StackedRNN):
    out = layer.apply(variables, x, True, rngs={"dropout": jax.random.key(0)})
  else:
    x = _as_tuple(x)
    out = layer.apply(variables, *x, mutable=mutable) if mutable else layer.apply(variables, *x)
  return out[0] if mutable else out


@pytest.mark.parametrize("mode", ["xla", "cpu_native"])
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
@pytest.mark.slow
def test_layer(name, mode):
  make, inputs = LAYER_CASES[name]
  layer = make()
  x = inputs(B)
  variables = layer.init(jax.random.key(0), *_as_tuple(x))
  if "params" not in variables:  # Parameter-free layers: differentiate w.r.t. the input.
    f = lambda v, x: _scalar(_layer_call(layer, {}, v["params"]["x"]))
    check_transformations(f, {"params": {"x": x}}, x, inputs(3), mode=mode)
    return
  loss = lambda v, x: _scalar(_layer_call(layer, v, x))
  check_transformations(loss, variables, x, inputs(3), mode=mode)


@pytest.mark.slow
def test_remat_of_a_block_with_positional_train():
  x = _image(2)
  block = nn.remat(cnn.BasicBlock, static_argnums=(2,))(8, 2, shortcut="pad")
  variables = block.init(jax.random.key(0), x, True)
  y, _ = block.apply(variables, x, True, mutable=["batch_stats"])
  ref, _ = cnn.BasicBlock(8, 2, shortcut="pad").apply(variables, x, True, mutable=["batch_stats"])
  np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- sharding


def _mesh():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs 8 devices (tests/conftest.py fakes 8 CPU devices)")
  return Mesh(np.asarray(devices[:8]), ("data",))


SHARDED_CASES = {
    # name: (model kwargs, task, batch of 16 rows)
    "rnn_lm": (dict(vocab_size=13, hidden_size=8, num_layers=2), tasks.LanguageModel(),
               lambda: {"inputs": jax.random.randint(jax.random.key(1), (16, 7), 0, 13),
                        "targets": jax.random.randint(jax.random.key(2), (16, 7), 0, 13),
                        "reset": jnp.zeros((16,), bool)}),
    "rnn_classifier": (dict(num_outputs=3, hidden_size=8, cell="gru"),
                       tasks.Classification(num_classes=3, input_key="inputs"),
                       lambda: {"inputs": jax.random.normal(jax.random.key(1), (16, 7, 4)),
                                "label": jnp.arange(16) % 3,
                                "seq_lengths": jnp.arange(16) % 7 + 1}),
    "cifar_resnet20": (dict(**_TINY_CIFAR), tasks.Classification(num_classes=10),
                       lambda: {"image": jax.random.normal(jax.random.key(1), (16, 8, 8, 3)),
                                "label": jnp.arange(16) % 10}),
    # Dense layers and attention products (cnnrnn.accel's matrix-product primitive).
    "vit": (dict(num_classes=5, patch_size=4, hidden_dim=8, depth=1, num_heads=2, mlp_dim=16,
                 image_size=8), tasks.Classification(num_classes=5),
            lambda: {"image": jax.random.normal(jax.random.key(1), (16, 8, 8, 3)),
                     "label": jnp.arange(16) % 5}),
}


@pytest.mark.parametrize("mode", ["xla", "cpu_native"])
@pytest.mark.parametrize("name", sorted(SHARDED_CASES))
@pytest.mark.slow
def test_sharded_train_step_keeps_the_batch_sharded(name, mode):
  """The trainer's compiled train step on 8 devices, laid out as the trainer lays it out
  (parameters replicated, batch and carry split over "data"): no all-gather (any would be
  of activations), recurrent loops run on 16 / 8 = 2 rows per device, and one step gives
  the same new parameters as the step on one device."""
  mesh = _mesh()
  kwargs, task, make_batch = SHARDED_CASES[name]
  model = models.create(name, **kwargs)
  batch = make_batch()
  tx = optax.sgd(0.1)
  args, kw = task.model_inputs(jax.tree.map(lambda a: a[:1], batch))
  variables = model.init(jax.random.key(0), *args, train=False, **kw)
  params = variables.pop("params")
  carry = model.zero_carry(16) if stateful.is_stateful(model) else None
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                     opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)),
                     carry=carry)
  rows = sharding.batch_sharding(mesh)
  state_shardings = sharding.tree_shardings(mesh, state).replace(
      carry=stateful.shardings(carry, rows))
  step = jax.jit(accel.accelerate(steps.make_train_step(model, task, tx), mode=mode),
                 in_shardings=(state_shardings, rows),
                 out_shardings=(state_shardings, sharding.replicated(mesh)))
  hlo = step.lower(state, batch).compile().as_text()
  assert "all-gather" not in hlo
  if name.startswith("rnn"):
    # The while loops' carries hold per-device rows: [2, H] arrays, never [16, H].
    loop_shapes = set(re.findall(r"f32\[(\d+),8\]", hlo))
    assert "2" in loop_shapes and "16" not in loop_shapes, loop_shapes
  new_state, _ = step(jax.device_put(state, state_shardings), jax.device_put(batch, rows))
  one_device, _ = jax.jit(steps.make_train_step(model, task, tx))(state, batch)
  _tree_close(jax.device_get(new_state.params), one_device.params, 1e-4, 1e-5)
