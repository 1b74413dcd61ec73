"""Transformer blocks against torch.nn.TransformerEncoderLayer / DecoderLayer, the MLP against
numpy, positions, and the decoder block's cache."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import nn as cnn
from cnnrnn.interop import torch_transformer as tt

torch = pytest.importorskip("torch")

B, S, T, D, H, F = 2, 6, 5, 8, 2, 16
RNG = np.random.default_rng(0)


def _x(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_mlp_matches_numpy(activation):
  x = _x(B, T, D)
  mlp = cnn.Mlp(F, out_dim=3, activation=activation)
  variables = mlp.init(jax.random.key(0), x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  act = {"relu": lambda z: np.maximum(z, 0),
         "gelu": lambda z: 0.5 * z * (1 + np.vectorize(math.erf)(z / np.sqrt(2))),
         "gelu_tanh": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
         }[activation]
  want = act(h) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  np.testing.assert_allclose(mlp.apply(variables, x), want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="allowed: relu, gelu, gelu_tanh"):
    cnn.Mlp(F, activation="swish").init(jax.random.key(0), x)


def test_gelu_is_the_exact_gelu_to_float32_rounding():
  """`gelu` (1 + erf, as PyTorch writes it) against the float64 erfc form, Flax's exact GELU
  and torch's, values and gradients, over [-12, 12]."""
  from cnnrnn.nn.transformer import gelu  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = np.linspace(-12, 12, 48001).astype(np.float32)
  x64 = x.astype(np.float64)
  want = x64 * 0.5 * np.vectorize(math.erfc)(-x64 / np.sqrt(2))
  got = np.asarray(jax.jit(gelu)(x), np.float64)
  np.testing.assert_array_less(np.abs(got - want), 2.5e-7 * np.maximum(1.0, np.abs(x64)))
  flax_gelu = lambda z: nn.gelu(z, approximate=False)
  np.testing.assert_allclose(got, np.asarray(flax_gelu(x)), rtol=0, atol=1.5e-6)
  np.testing.assert_allclose(got, torch.nn.functional.gelu(torch.from_numpy(x)).numpy(),
                             rtol=0, atol=1.5e-6)
  # d/dx = Phi(x) + x phi(x).
  want_grad = (0.5 * np.vectorize(math.erfc)(-x64 / np.sqrt(2))
               + x64 * np.exp(-x64 ** 2 / 2) / np.sqrt(2 * np.pi))
  grad = np.asarray(jax.jit(jax.grad(lambda z: gelu(z).sum()))(x), np.float64)
  np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-6)
  assert gelu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


def test_sinusoidal_positions_follow_the_paper():
  pe = cnn.sinusoidal_positions(50, 6)
  pos, i = 37, 2
  assert pe[pos, 2 * i] == pytest.approx(np.sin(pos / 10000 ** (2 * i / 6)), rel=1e-6)
  assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(pos / 10000 ** (2 * i / 6)), rel=1e-6)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_block_matches_torch(norm_first, activation):
  torch.manual_seed(0)
  ref = torch.nn.TransformerEncoderLayer(D, H, F, dropout=0.0, activation=activation,
                                         batch_first=True, norm_first=norm_first).eval()
  with torch.no_grad():  # Non-trivial LayerNorm parameters.
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(torch.randn_like(p) * 0.1)
  block = cnn.TransformerEncoderBlock(H, F, norm_first=norm_first, activation=activation)
  params = tt.encoder_block_from_torch(ref.state_dict(), H)
  x = _x(B, S, D)
  valid = np.arange(S)[None] < np.array([[S], [3]])
  with torch.no_grad():
    want = ref(torch.from_numpy(x), src_key_padding_mask=torch.from_numpy(~valid)).numpy()
  got = block.apply({"params": params}, x, valid[:, None, None, :])
  # torch's eval fast path zeroes padded positions; compare the valid ones.
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=1e-5, atol=3e-6)
  back = tt.encoder_block_to_torch(params)
  assert back.keys() == ref.state_dict().keys()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.slow
def test_decoder_block_matches_torch(norm_first):
  torch.manual_seed(1)
  ref = torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.0, batch_first=True,
                                         norm_first=norm_first).eval()
  block = cnn.TransformerDecoderBlock(H, F, norm_first=norm_first)
  params = tt.decoder_block_from_torch(ref.state_dict(), H)
  x, mem = _x(B, T, D), _x(B, S, D)
  valid = np.arange(S)[None] < np.array([[S], [2]])
  with torch.no_grad():
    want = ref(torch.from_numpy(x), torch.from_numpy(mem),
               tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(T),
               tgt_is_causal=True, memory_key_padding_mask=torch.from_numpy(~valid)).numpy()
  got, weights = block.apply({"params": params}, x, mem, cross_mask=valid[:, None, None, :],
                             return_weights=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=3e-6)
  assert not np.any(np.asarray(weights["cross"])[1, ..., 2:])
  assert not np.any(np.triu(np.ones((T, T)), 1) * np.asarray(weights["self"]))
  assert tt.decoder_block_to_torch(params).keys() == ref.state_dict().keys()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.slow
def test_decoder_stack_cached_incremental_equals_full(norm_first):
  dec = cnn.TransformerDecoder(2, dict(num_heads=H, mlp_dim=F, norm_first=norm_first))
  x, mem = _x(B, T, D), _x(B, S, D)
  cross = (np.arange(S)[None] < np.array([[S], [3]]))[:, None, None, :]
  params = dec.init(jax.random.key(0), x, mem, cross_mask=cross)["params"]
  full = dec.apply({"params": params}, x, mem, cross_mask=cross)
  _, cache = dec.apply({"params": params}, x, mem, cross_mask=cross, decode=True,
                       mutable=["cache"])
  step = jax.jit(lambda c, xt: dec.apply({"params": params, **c}, xt, mem, cross_mask=cross,
                                         decode=True, mutable=["cache"]))
  outs = []
  for t in range(T):
    y, cache = step(cache, x[:, t:t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=2e-6)


def test_positional_encoding_decode_offsets_and_learned_table():
  x = _x(B, T, D)
  for kind in ("sinusoidal", "learned"):
    pos = cnn.PositionalEncoding(kind, max_len=8)
    variables = pos.init(jax.random.key(0), x)
    full = pos.apply(variables, x)
    _, cache = pos.apply(variables, x, decode=True, mutable=["cache"])
    y0, cache = pos.apply({**variables, **cache}, x[:, :2], decode=True, mutable=["cache"])
    y1, _ = pos.apply({**variables, **cache}, x[:, 2:], decode=True, mutable=["cache"])
    np.testing.assert_allclose(jnp.concatenate([y0, y1], 1), full, rtol=1e-6)
  with pytest.raises(ValueError, match="exceeds max_len=4"):
    cnn.PositionalEncoding(max_len=4).init(jax.random.key(0), x)


@pytest.mark.slow
def test_block_composes_with_jax_transformations():
  """jacfwd == jacrev, a symmetric Hessian, vmap, nn.remat and jax.export on a tiny block."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  block = cnn.TransformerEncoderBlock(H, F, norm_first=False, activation="gelu")
  x = _x(1, 3, D)
  mask = cnn.make_causal_mask(x[..., 0])
  variables = block.init(jax.random.key(0), x, mask)
  f = lambda x: block.apply(variables, x, mask)  # noqa: E731
  np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(x), jax.jit(jax.jacrev(f))(x), rtol=1e-4,
                             atol=1e-5)
  hess = jax.jit(jax.hessian(lambda x: jnp.sum(f(x) ** 3)))(x).reshape(x.size, x.size)
  np.testing.assert_allclose(hess, hess.T, rtol=1e-3, atol=1e-4)
  xs = _x(2, 1, 3, D)
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(xs), jnp.stack([f(xs[0]), f(xs[1])]),
                             rtol=1e-5, atol=1e-6)
  remat = nn.remat(cnn.TransformerEncoderBlock, static_argnums=(3, 4))(
      H, F, norm_first=False, activation="gelu")
  grad = lambda m: jax.jit(jax.grad(  # noqa: E731
      lambda v: jnp.sum(m.apply(v, x, mask, False, False) ** 2)))(variables)
  for a, b in zip(jax.tree.leaves(grad(remat)), jax.tree.leaves(grad(block))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  exported = jax.export.export(jax.jit(f))(jax.ShapeDtypeStruct(x.shape, x.dtype))
  np.testing.assert_allclose(exported.call(x), f(x), rtol=1e-6, atol=1e-6)


def test_pre_ln_fused_block_matches_timm_vit_block():
  """ViT's block: pre-LN, fused qkv, exact GELU, eps 1e-6; timm's qkv rows are [q | k | v]."""
  vit = pytest.importorskip("timm.models.vision_transformer")
  torch.manual_seed(2)
  ref = vit.Block(D, H, mlp_ratio=F / D, qkv_bias=True).eval()
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  dh = D // H
  ln = lambda p: {"scale": sd[p + ".weight"], "bias": sd[p + ".bias"]}  # noqa: E731
  dense = lambda p: {"kernel": sd[p + ".weight"].T, "bias": sd[p + ".bias"]}  # noqa: E731
  params = {"norm1": ln("norm1"), "norm2": ln("norm2"),
            "attn": {"qkv": {"kernel": sd["attn.qkv.weight"].reshape(3, H, dh, D).transpose(
                                 3, 0, 1, 2),
                             "bias": sd["attn.qkv.bias"].reshape(3, H, dh)},
                     "out": {"kernel": sd["attn.proj.weight"].T.reshape(H, dh, D),
                             "bias": sd["attn.proj.bias"]}},
            "mlp": {"fc1": dense("mlp.fc1"), "fc2": dense("mlp.fc2")}}
  block = cnn.TransformerEncoderBlock(H, F, norm_first=True, activation="gelu",
                                      layer_norm_epsilon=1e-6, fused_qkv=True)
  x = _x(B, S, D)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(block.apply({"params": params}, x), want, rtol=1e-5, atol=2e-6)
