"""Attention layers against numpy references and torch.nn.MultiheadAttention; masks, fused
projections and the key/value cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import nn as cnn
from cnnrnn.interop.torch import mha_from_torch, mha_params_from_torch, mha_params_to_torch

B, TQ, TK, D, H = 2, 5, 6, 8, 2
RNG = np.random.default_rng(0)


def _x(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def _np_softmax(x, mask):
  x = np.where(mask, x, -np.inf)
  m = np.max(np.where(mask, x, -1e30), -1, keepdims=True)
  e = np.where(mask, np.exp(x - m), 0.0)
  s = e.sum(-1, keepdims=True)
  return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def _np_mha(p, q_in, kv_in, mask):
  """Reference multi-head attention on Flax-layout params (numpy, float64)."""
  q = np.einsum("btd,dhk->bthk", q_in, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("btd,dhk->bthk", kv_in, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("btd,dhk->bthk", kv_in, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  w = _np_softmax(logits, np.broadcast_to(mask, logits.shape))
  ctx = np.einsum("bhqk,bkhd->bqhd", w, v)
  out = np.einsum("bqhd,hdo->bqo", ctx, p["out"]["kernel"]) + p["out"]["bias"]
  return np.where(np.broadcast_to(mask, logits.shape).any((1, 3))[..., None], out, 0), w


def _padding_mask(q_len=(5, 3), k_len=(6, 2)):
  q_valid = np.arange(TQ)[None] < np.array(q_len)[:, None]
  k_valid = np.arange(TK)[None] < np.array(k_len)[:, None]
  return np.asarray(cnn.make_attention_mask(q_valid, k_valid))  # [B, 1, Tq, Tk]


@pytest.mark.parametrize("return_weights", [False, True])
@pytest.mark.slow
def test_mha_matches_numpy_with_padding(return_weights):
  mha = cnn.MultiHeadAttention(H, qkv_features=6, out_features=7)
  q, kv = _x(B, TQ, D), _x(B, TK, 3)
  mask = _padding_mask(q_len=(5, 0))  # The second item's queries see nothing: zeros.
  variables = mha.init(jax.random.key(0), q, kv)
  out = mha.apply(variables, q, kv, mask, return_weights=return_weights)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  ref, ref_w = _np_mha(p, q, kv, mask)
  if return_weights:
    out, w = out
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  assert not np.any(np.asarray(out)[1])
  assert out.shape == (B, TQ, 7)


def test_padded_key_never_receives_weight_and_causal_never_looks_ahead():
  mha = cnn.MultiHeadAttention(H)
  x = _x(B, TK, D)
  valid = np.arange(TK)[None] < np.array([[6], [3]])
  mask = jnp.logical_and(cnn.make_attention_mask(valid, valid), cnn.make_causal_mask(x[..., 0]))
  variables = mha.init(jax.random.key(1), x)
  out, w = mha.apply(variables, x, mask=mask, return_weights=True)
  w = np.asarray(w)
  assert not np.any(w[1, :, :, 3:])  # padded keys
  assert not np.any(np.triu(np.ones((TK, TK)), 1) * w)  # the future
  np.testing.assert_allclose(w[0].sum(-1), 1.0, rtol=1e-6)
  # Changing a padded key or a future position does not change earlier outputs.
  x2 = x.copy()
  x2[1, 4:] += 10.0
  x2[0, 5] += 10.0
  out2 = mha.apply(variables, x2, mask=mask)
  np.testing.assert_allclose(out2[1, :3], out[1, :3], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out2[0, :5], out[0, :5], rtol=1e-6, atol=1e-6)


def test_fused_equals_separate_with_the_same_weights():
  x = _x(B, TK, D)
  sep = cnn.MultiHeadAttention(H)
  fused = cnn.MultiHeadAttention(H, fused_qkv=True)
  params = sep.init(jax.random.key(2), x)["params"]
  fp = {"out": params["out"], "qkv": {
      "kernel": jnp.stack([params[n]["kernel"] for n in ("query", "key", "value")], 1),
      "bias": jnp.stack([params[n]["bias"] for n in ("query", "key", "value")])}}
  assert jax.tree.map(jnp.shape, fused.init(jax.random.key(0), x)["params"]) == jax.tree.map(
      jnp.shape, fp)
  mask = cnn.make_causal_mask(x[..., 0])
  np.testing.assert_allclose(fused.apply({"params": fp}, x, mask=mask),
                             sep.apply({"params": params}, x, mask=mask), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="self-attention only"):
    fused.apply({"params": fp}, x, x)


@pytest.mark.parametrize("fused_qkv", [False, True])
@pytest.mark.slow
def test_jax_dot_product_attention_path_agrees_and_dropout_needs_train(fused_qkv):
  """implementation="xla" runs jax.nn.dot_product_attention (token-major); the default is
  the head-major attention written out; both give the same outputs and gradients, with an
  all-masked query row among them."""
  x = _x(B, TK, D)
  ours = cnn.MultiHeadAttention(H, dropout_rate=0.5, fused_qkv=fused_qkv)
  jaxs = cnn.MultiHeadAttention(H, dropout_rate=0.5, fused_qkv=fused_qkv, implementation="xla")
  variables = ours.init(jax.random.key(3), x)
  mask = _padding_mask(q_len=(6, 6), k_len=(6, 0))[:, :, :1].repeat(TK, 2)

  def loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply({"params": params}, x, mask=mask)))

  np.testing.assert_allclose(jaxs.apply(variables, x, mask=mask),
                             ours.apply(variables, x, mask=mask), rtol=1e-5, atol=1e-6)
  for got, want in zip(jax.tree.leaves(jax.grad(loss, (1, 2))(jaxs, variables["params"], x)),
                       jax.tree.leaves(jax.grad(loss, (1, 2))(ours, variables["params"], x))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  fast = jaxs.apply(variables, x, mask=mask)
  dropped = jaxs.apply(variables, x, mask=mask, train=True, rngs={"dropout": jax.random.key(0)})
  assert not np.allclose(dropped, fast)


@pytest.mark.parametrize("implementation", ["xla", "cudnn"])
@pytest.mark.slow
def test_jax_dot_product_attention_path_with_causal_and_padding_masks(implementation):
  """Causal self-attention over padded sequences and cross-attention over padded memory:
  jax.nn.dot_product_attention gives the default path's outputs and gradients. "cudnn" with
  float32 compute is not cuDNN's to run: it goes to XLA's implementation (so it runs here)."""
  x, memory = _x(B, TK, D), _x(B, TQ, D)
  valid = np.arange(TK)[None] < np.array([[6], [4]])
  causal = np.logical_and(cnn.make_attention_mask(valid, valid), cnn.make_causal_mask(x[..., 0]))
  mem_valid = np.arange(TQ)[None] < np.array([[5], [2]])
  cross = cnn.make_attention_mask(valid, mem_valid)  # [B, 1, TK, TQ]
  ours, theirs = cnn.MultiHeadAttention(H), cnn.MultiHeadAttention(H, implementation=implementation)
  variables = ours.init(jax.random.key(4), x)

  def loss(module, params, x, memory):
    self_out = module.apply({"params": params}, x, mask=causal)
    cross_out = module.apply({"params": params}, x, memory, mask=cross)
    return jnp.sum(jnp.sin(self_out)) + jnp.sum(jnp.cos(cross_out)), (self_out, cross_out)

  (want, want_out), want_grads = jax.value_and_grad(loss, (1, 2, 3), has_aux=True)(
      ours, variables["params"], x, memory)
  (got, got_out), got_grads = jax.value_and_grad(loss, (1, 2, 3), has_aux=True)(
      theirs, variables["params"], x, memory)
  for g, w in zip(got_out, want_out):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
  # A changed token changes nothing before it.
  x2 = x.copy()
  x2[0, 4] += 5.0
  out2 = theirs.apply(variables, x2, mask=causal)
  np.testing.assert_allclose(out2[0, :4], want_out[0][0, :4], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out2[0, 4], want_out[0][0, 4])


def test_unknown_attention_implementation_is_refused():
  x = _x(B, TK, D)
  with pytest.raises(ValueError, match=r"implementation='flash'; allowed: None, 'xla', 'cudnn'"):
    cnn.MultiHeadAttention(H, implementation="flash").init(jax.random.key(0), x)


@pytest.mark.slow
def test_masked_softmax_derivatives_are_the_softmax_ones():
  """The custom JVP rule equals differentiating the formula, to second order, masked
  entries and all-masked rows included (they get exactly zero)."""
  x = jnp.asarray(_x(3, 5))
  mask = jnp.asarray(np.array([[1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], bool))

  def formula(x):
    m = jnp.max(jnp.where(mask, x, jnp.min(x)), -1, keepdims=True)
    e = jnp.where(mask, jnp.exp(jnp.where(mask, x, m) - m), 0)  # finite in all-masked rows
    s = jnp.sum(e, -1, keepdims=True)
    return e / jnp.where(s > 0, s, 1)

  scale = jnp.arange(1.0, 6.0)[None]
  f = lambda x: jnp.sum(jnp.sin(cnn.masked_softmax(x, mask) * scale))  # noqa: E731
  g = lambda x: jnp.sum(jnp.sin(formula(x) * scale))  # noqa: E731
  np.testing.assert_allclose(cnn.masked_softmax(x, mask), formula(x), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.grad(f)(x), jax.grad(g)(x), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jax.hessian(f)(x), jax.hessian(g)(x), rtol=1e-4, atol=1e-6)
  tangent = jnp.asarray(_x(3, 5))
  _, got = jax.jvp(lambda x: cnn.masked_softmax(x, mask), (x,), (tangent,))
  _, want = jax.jvp(formula, (x,), (tangent,))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert not np.any(jax.grad(f)(x)[~np.asarray(mask)])


def test_mha_matches_torch_multihead_attention():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  ref = torch.nn.MultiheadAttention(D, H, batch_first=True).eval()
  ours, variables = mha_from_torch(ref)
  q, kv = _x(B, TQ, D), _x(B, TK, D)
  k_valid = np.arange(TK)[None] < np.array([[6], [2]])
  causal = np.triu(np.ones((TQ, TK), bool), 1)  # torch: True = masked
  with torch.no_grad():
    want, want_w = ref(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv),
                       key_padding_mask=torch.from_numpy(~k_valid),
                       attn_mask=torch.from_numpy(causal), average_attn_weights=False)
  mask = np.logical_and(k_valid[:, None, None, :], ~causal[None, None])
  got, got_w = ours.apply(variables, q, kv, mask, return_weights=True)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(got_w, want_w.numpy(), rtol=1e-5, atol=2e-6)
  # Back to torch: the same state dict.
  back = mha_params_to_torch(variables["params"])
  for name, value in ref.state_dict().items():
    np.testing.assert_allclose(back[name], value.numpy(), rtol=0, atol=0)
  fused = mha_params_from_torch(ref.state_dict(), H, fused_qkv=True)
  with torch.no_grad():
    want_self = ref(*(torch.from_numpy(q),) * 3, attn_mask=torch.from_numpy(causal[:, :TQ]),
                    need_weights=False)[0].numpy()
  got_self = cnn.MultiHeadAttention(H, fused_qkv=True).apply(
      {"params": fused}, q, mask=~causal[:, :TQ])
  np.testing.assert_allclose(got_self, want_self, rtol=1e-5, atol=2e-6)
  for name, value in mha_params_to_torch(fused).items():
    np.testing.assert_array_equal(value, back[name])


@pytest.mark.slow
def test_cached_incremental_equals_full():
  x = _x(B, TK, D)
  mha = cnn.MultiHeadAttention(H, decode=True)
  params = cnn.MultiHeadAttention(H).init(jax.random.key(4), x)["params"]
  full = cnn.MultiHeadAttention(H).apply({"params": params}, x,
                                         mask=cnn.make_causal_mask(x[..., 0]))
  _, cache = mha.apply({"params": params}, jnp.zeros_like(x), mutable=["cache"])
  cache = jax.tree.map(jnp.zeros_like, cache["cache"])
  step = jax.jit(lambda c, xt: mha.apply({"params": params, "cache": c}, xt, mutable=["cache"]))
  outs = []
  for chunk in (x[:, :1], x[:, 1:2], x[:, 2:5], x[:, 5:]):  # One token, then a chunk.
    y, mutated = step(cache, chunk) if chunk.shape[1] == 1 else mha.apply(
        {"params": params, "cache": cache}, chunk, mutable=["cache"])
    cache = mutated["cache"]
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-6)
  assert int(cache["cache_index"]) == TK


def test_cross_attention_cache_reuses_the_memory():
  q, mem = _x(B, TQ, D), _x(B, TK, D)
  mha = cnn.MultiHeadAttention(H, decode=True)
  params = cnn.MultiHeadAttention(H).init(jax.random.key(5), q, mem)["params"]
  full = cnn.MultiHeadAttention(H).apply({"params": params}, q, mem)
  _, cache = mha.apply({"params": params}, q[:, :1], mem, mutable=["cache"])
  y, _ = mha.apply({"params": params, **cache}, q[:, 3:4], jnp.zeros_like(mem),
                   mutable=["cache"])
  np.testing.assert_allclose(y, full[:, 3:4], rtol=1e-5, atol=1e-6)


def _np_additive(p, q, k, v, mask):
  hidden = np.tanh((q @ p["query"]["kernel"])[:, :, None] + (k @ p["key"]["kernel"] +
                                                             p["key"]["bias"])[:, None])
  scores = (hidden @ p["energy"]["kernel"])[..., 0]
  w = _np_softmax(scores, mask)
  return np.einsum("bqk,bkd->bqd", w, v), w


def _np_luong(score, p, q, k, v, mask):
  if score == "dot":
    s = np.einsum("bqd,bkd->bqk", q, k)
  elif score == "general":
    s = np.einsum("bqd,de,bke->bqk", q, p["query"]["kernel"], k)
  else:
    hidden = np.tanh((q @ p["query"]["kernel"])[:, :, None] + (k @ p["key"]["kernel"])[:, None])
    s = (hidden @ p["energy"]["kernel"])[..., 0]
  w = _np_softmax(s, mask)
  return np.einsum("bqk,bkd->bqd", w, v), w


@pytest.mark.parametrize("layer", ["additive", "dot", "general", "concat"])
@pytest.mark.parametrize("vector_query", [True, False])
def test_bahdanau_and_luong_match_numpy(layer, vector_query):
  module = (cnn.AdditiveAttention(features=7) if layer == "additive" else
            cnn.LuongAttention(score=layer, features=7))
  q = _x(B, D) if vector_query else _x(B, TQ, D)
  k, v = _x(B, TK, D), _x(B, TK, 3)
  lengths = np.array([6, 2])
  mask = np.arange(TK)[None] < lengths[:, None]  # [B, Tk]
  variables = module.init(jax.random.key(6), q, k, v, mask)
  ctx, w = module.apply(variables, q, k, v, mask)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables.get("params", {}))
  q3 = q[:, None] if vector_query else q
  ref_ctx, ref_w = (_np_additive(p, q3, k, v, mask[:, None]) if layer == "additive" else
                    _np_luong(layer, p, q3, k, v, mask[:, None]))
  if vector_query:
    ref_ctx, ref_w = ref_ctx[:, 0], ref_w[:, 0]
  np.testing.assert_allclose(ctx, ref_ctx, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(w)[1, ..., 2:])


def test_additive_matches_a_torch_bahdanau_layer():
  """pytorch-seq2seq's Attention: v(tanh(Linear([hidden; encoder_outputs])))."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  attn, v = torch.nn.Linear(2 * D, 7), torch.nn.Linear(7, 1, bias=False)
  q, k = _x(B, D), _x(B, TK, D)
  mask = np.arange(TK)[None] < np.array([[6], [2]])
  with torch.no_grad():
    qt = torch.from_numpy(q)[:, None].repeat(1, TK, 1)
    energy = torch.tanh(attn(torch.cat([qt, torch.from_numpy(k)], 2)))
    scores = v(energy)[..., 0].masked_fill(torch.from_numpy(~mask), -1e10)
    want = torch.softmax(scores, 1).numpy()
  w_all = attn.weight.detach().numpy().T  # [2D, 7]: rows for the query, then the keys
  params = {"query": {"kernel": w_all[:D]}, "key": {"kernel": w_all[D:],
                                                    "bias": attn.bias.detach().numpy()},
            "energy": {"kernel": v.weight.detach().numpy().T}}
  _, w = cnn.AdditiveAttention(features=7).apply({"params": params}, q, k, mask=mask)
  np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise():
  x = jnp.ones((1, 2, 6))
  with pytest.raises(ValueError, match="divisible by num_heads"):
    cnn.MultiHeadAttention(4).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="allowed: dot, general, concat"):
    cnn.LuongAttention(score="bilinear").init(jax.random.key(0), x[:, 0], x)
  with pytest.raises(ValueError, match="widths equal"):
    cnn.LuongAttention(score="dot").init(jax.random.key(0), x[:, 0, :3], x)


@pytest.mark.parametrize("return_weights", [False, True])
def test_gradients_are_finite_with_fully_masked_rows(return_weights):
  mha = cnn.MultiHeadAttention(H)
  q, kv = _x(B, TQ, D), _x(B, TK, D)
  mask = _padding_mask(q_len=(5, 0), k_len=(6, 0))
  variables = mha.init(jax.random.key(7), q, kv)

  def loss(params, q, kv):
    out = mha.apply({"params": params}, q, kv, mask, return_weights=return_weights)
    out = out[0] if return_weights else out
    return jnp.sum(out ** 2)

  grads = jax.grad(loss, argnums=(0, 1, 2))(variables["params"], q, kv)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert not np.any(grads[1][1]) and not np.any(grads[2][1])  # nothing flows to masked rows


def test_bfloat16_compute_keeps_float32_params():
  mha = cnn.MultiHeadAttention(H, dtype=jnp.bfloat16)
  x = _x(B, TK, D)
  variables = mha.init(jax.random.key(8), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  mask = cnn.make_causal_mask(x[..., 0])
  out = mha.apply(variables, x, mask=mask)
  ref = cnn.MultiHeadAttention(H).apply(variables, x, mask=mask)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), ref, atol=5e-2)


def test_flax_multi_head_attention_checkpoints_load_unchanged():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  q, kv = _x(B, TQ, D), _x(B, TK, D)
  mask = _padding_mask(q_len=(5, 5))
  flax_mha = nn.MultiHeadDotProductAttention(H, qkv_features=6, out_features=5)
  variables = flax_mha.init(jax.random.key(9), q, kv, mask=mask)
  ours = cnn.MultiHeadAttention(H, qkv_features=6, out_features=5)
  np.testing.assert_allclose(ours.apply(variables, q, kv, mask),
                             flax_mha.apply(variables, q, kv, mask=mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["additive", "concat"])
def test_decode_mode_projects_the_keys_once(layer):
  make = (lambda **kw: cnn.AdditiveAttention(features=7, **kw)) if layer == "additive" else (
      lambda **kw: cnn.LuongAttention(score="concat", features=7, **kw))
  q, k = _x(3, B, D), _x(B, TK, D)
  mask = np.arange(TK)[None] < np.array([[6], [2]])
  variables = make().init(jax.random.key(10), q[0], k, mask=mask)
  stepper = make(decode=True)
  _, cache = stepper.apply(variables, q[0], k, mask=mask, mutable=["cache"])
  assert cache["cache"]["projected_keys"].shape == (B, TK, 7)
  for t in range(3):  # keys are read from the cache: the argument is only the values' default
    (ctx, w), _ = stepper.apply({**variables, **cache}, q[t], jnp.zeros_like(k), k, mask,
                                mutable=["cache"])
    want_ctx, want_w = make().apply(variables, q[t], k, mask=mask)
    np.testing.assert_allclose(w, want_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ctx, want_ctx, rtol=1e-6, atol=1e-7)
