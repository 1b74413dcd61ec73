"""The transformer model against a torch.nn.Transformer translation model (post-LN and
norm_first=True), weights converted both ways."""

import jax
import numpy as np
import pytest

from cnnrnn import models
from cnnrnn.interop.torch import transformer_from_torch, transformer_to_torch
from cnnrnn.nn import sinusoidal_positions

torch = pytest.importorskip("torch")

V, D, H, L, F, MAX_LEN = 13, 8, 2, 2, 16, 12


class TorchTranslator(torch.nn.Module):
  """Embeddings * sqrt(D) + positions -> nn.Transformer -> output layer (converter's names)."""

  def __init__(self, norm_first, shared, learned):
    super().__init__()
    tr = torch.nn.Transformer(D, H, L, L, F, dropout=0.0, batch_first=True,
                              norm_first=norm_first)
    self.encoder, self.decoder = tr.encoder, tr.decoder
    self.shared, self.learned = shared, learned
    if shared:
      self.embed = torch.nn.Embedding(V, D)
      self.head_bias = torch.nn.Parameter(torch.randn(V) * 0.1)
    else:
      self.src_embed, self.tgt_embed = torch.nn.Embedding(V, D), torch.nn.Embedding(V, D)
      self.head = torch.nn.Linear(D, V)
    if learned:
      self.src_pos, self.tgt_pos = torch.nn.Embedding(MAX_LEN, D), torch.nn.Embedding(MAX_LEN, D)
    else:
      self.register_buffer("table", torch.from_numpy(sinusoidal_positions(MAX_LEN, D)),
                           persistent=False)

  def _embed(self, tokens, side):
    emb = self.embed if self.shared else getattr(self, f"{side}_embed")
    pos = (getattr(self, f"{side}_pos").weight if self.learned else self.table)[:tokens.shape[1]]
    return emb(tokens) * D ** 0.5 + pos

  def forward(self, src, tgt):
    pad = src == 0
    memory = self.encoder(self._embed(src, "src"), src_key_padding_mask=pad)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
    y = self.decoder(self._embed(tgt, "tgt"), memory, tgt_mask=causal, tgt_is_causal=True,
                     memory_key_padding_mask=pad)
    if self.shared:
      return y @ self.embed.weight.T + self.head_bias
    return self.head(y)


@pytest.mark.parametrize("norm_first,shared,learned", [(False, False, False), (True, True, True)])
@pytest.mark.slow
def test_transformer_matches_torch(norm_first, shared, learned):
  torch.manual_seed(0)
  ref = TorchTranslator(norm_first, shared, learned).eval()
  model = models.create("transformer", vocab_size=V, num_layers=L, d_model=D, num_heads=H,
                        mlp_dim=F, dropout_rate=0.0, norm_first=norm_first, final_norm=True,
                        share_embeddings=shared, tie_output=shared,
                        positions="learned" if learned else "sinusoidal", max_len=MAX_LEN)
  params = transformer_from_torch(ref.state_dict(), H, model=model)
  rng = np.random.default_rng(0)
  src = rng.integers(4, V, (3, 7))
  src[1, 4:], src[2, 2:] = 0, 0
  tgt = rng.integers(4, V, (3, 6))
  tgt[:, 0] = 2
  with torch.no_grad():
    want = ref(torch.from_numpy(src), torch.from_numpy(tgt)).numpy()
  shapes = jax.tree.map(np.shape, model.init(jax.random.key(0), src, tgt)["params"])
  assert jax.tree.map(np.shape, params) == shapes
  got = model.apply({"params": params}, src, tgt)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  back = transformer_to_torch(params)
  assert back.keys() == ref.state_dict().keys()
  for name, value in ref.state_dict().items():
    np.testing.assert_array_equal(back[name], value.numpy(), err_msg=name)


def test_conversion_errors_name_the_bad_entries():
  ref = TorchTranslator(False, False, False)
  sd = dict(ref.state_dict())
  model = models.create("transformer", vocab_size=V, num_layers=L, d_model=D, num_heads=H,
                        mlp_dim=F, final_norm=True, max_len=MAX_LEN)
  with pytest.raises(ValueError, match="no counterpart.*extra.weight"):
    transformer_from_torch({**sd, "extra.weight": sd["head.weight"]}, H)
  with pytest.raises(ValueError, match="encoder/norm/scale: missing"):
    transformer_from_torch({k: v for k, v in sd.items() if not k.startswith("encoder.norm")}, H,
                           model=model)
  with pytest.raises(ValueError, match=r"head/kernel: shape \(8, 13\), model expects \(8, 5\)"):
    transformer_from_torch(sd, H, model=model.clone(tgt_vocab_size=5))
