"""Transformer training step and beam-search decoding: cnnrnn vs PyTorch eager.

Model (both sides, the pytorch-seq2seq Multi30k Transformer): 3+3 layers, D 256, 8 heads,
FFN 512, post-LN, separate source/target embeddings (scaled by sqrt(D)) + sinusoidal
positions, output layer to the vocabulary; dropout 0.1 in training.

  train   one step = forward + backward + Adam update on B=128 pairs of 30+30 tokens,
          vocabulary 8000, cross-entropy ignoring pad. ours: `transformer` model, optax.adam,
          jit with donated state, traced under `accel="auto"` as the trainer does (on one
          CPU device: the dense layers' and attention's products as cnnrnn.accel's
          primitive; `--xla` adds ours-xla, plain XLA), dropout masks from JAX's default
          threefry keys; ours-rbg:
          the same with "rbg" keys (XLA's RngBitGenerator; threefry is counter-based hashing,
          costly on CPU for ~25 masks of ~1M elements). torch: nn.Embedding x2 +
          nn.Transformer(batch_first) + nn.Linear, torch.optim.Adam, eager.
  decode  beam search (K=4, GNMT alpha 0.6, early stop) of a batch of sentences up to
          `max_len` tokens; reported as sentences/s. ours: `cnnrnn.decode.generate`
          (incremental decoding with the key/value cache, one jitted while-loop). torch: the
          same algorithm written in torch, batched, re-running the decoder over the whole
          prefix at every step (nn.TransformerDecoder has no key/value cache), with the same
          weights (converted by `cnnrnn.interop.torch.transformer_to_torch`), so both decode
          the same sentences (checked before timing).

Interleaved A B A B (experiments/benchmarks/harness.py), medians; "speed vs torch" is the
torch median over ours (above 1: faster than PyTorch). Not a test. Smoke run:

    python experiments/benchmarks/bench_transformer.py --tiny
    python experiments/benchmarks/bench_transformer.py [--rounds=6] [--parts=train,decode] [--xla]
"""

import functools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

if __name__ == "__main__":
  harness.xla_flags_from_argv(sys.argv)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from cnnrnn import decode, models  # noqa: E402
from cnnrnn.interop.torch import transformer_to_torch  # noqa: E402
from cnnrnn.nn import sinusoidal_positions  # noqa: E402

PAD, BOS, EOS = 0, 2, 3
FULL = dict(layers=3, d=256, heads=8, ff=512, batch=128, src_len=30, tgt_len=30, vocab=8000,
            decode_batch=128, beam=4, max_len=30)
TINY = dict(layers=1, d=16, heads=2, ff=32, batch=4, src_len=6, tgt_len=5, vocab=50,
            decode_batch=3, beam=2, max_len=6)


class TorchTranslator(torch.nn.Module):
  """Embeddings * sqrt(D) + sinusoidal positions -> nn.Transformer -> output layer.

  Attribute names are those of `transformer_to_torch`'s state dict.
  """

  def __init__(self, cfg, dropout):
    super().__init__()
    tr = torch.nn.Transformer(cfg["d"], cfg["heads"], cfg["layers"], cfg["layers"], cfg["ff"],
                              dropout=dropout, batch_first=True)
    self.encoder, self.decoder = tr.encoder, tr.decoder
    self.src_embed = torch.nn.Embedding(cfg["vocab"], cfg["d"])
    self.tgt_embed = torch.nn.Embedding(cfg["vocab"], cfg["d"])
    self.head = torch.nn.Linear(cfg["d"], cfg["vocab"])
    self.drop = torch.nn.Dropout(dropout)
    self.scale = cfg["d"] ** 0.5
    self.register_buffer("table", torch.from_numpy(sinusoidal_positions(256, cfg["d"])),
                         persistent=False)

  def _embed(self, embed, tokens):
    return self.drop(embed(tokens) * self.scale + self.table[:tokens.shape[1]])

  def encode(self, src):
    pad = src == PAD
    return self.encoder(self._embed(self.src_embed, src), src_key_padding_mask=pad), pad

  def decode(self, tgt, memory, pad):
    causal = torch.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
    y = self.decoder(self._embed(self.tgt_embed, tgt), memory, tgt_mask=causal,
                     tgt_is_causal=True, memory_key_padding_mask=pad)
    return self.head(y)

  def forward(self, src, tgt):
    return self.decode(tgt, *self.encode(src))


@torch.no_grad()
def torch_beam_search(model, src, beam, max_len, alpha):
  """cnnrnn.decode.beam_search's algorithm in torch: (tokens [B, max_len], scores [B])."""
  b, k = src.shape[0], beam
  memory, pad = model.encode(src)
  memory, pad = memory.repeat_interleave(k, 0), pad.repeat_interleave(k, 0)
  seqs = torch.full((b * k, 1), BOS, dtype=torch.long)
  live = torch.full((b, k), -float("inf"))
  live[:, 0] = 0.0
  fin_scores = torch.full((b, k), -float("inf"))
  fin_seqs = torch.zeros((b, k, max_len), dtype=torch.long)
  penalty = lambda n: ((5.0 + n) / 6.0) ** alpha  # noqa: E731
  first_k = torch.arange(2 * k) < k
  for step in range(max_len):
    logp = torch.log_softmax(model.decode(seqs, memory, pad)[:, -1], -1)
    vocab = logp.shape[-1]
    top, index = (live[:, :, None] + logp.view(b, k, vocab)).view(b, -1).topk(2 * k)
    origin, token = index // vocab, index % vocab
    grown = torch.cat([seqs.view(b, k, -1).gather(1, origin[:, :, None].expand(-1, -1, step + 1)),
                       token[:, :, None]], 2)  # [B, 2K, step + 2] with BOS
    is_eos = token == EOS
    live, pick = top.masked_fill(is_eos, -float("inf")).topk(k)
    seqs = grown.gather(1, pick[:, :, None].expand(-1, -1, step + 2)).view(b * k, -1)
    new = torch.where(is_eos & first_k, top / penalty(step + 1), -float("inf"))
    done = torch.zeros((b, 2 * k, max_len), dtype=torch.long)
    done[:, :, :step + 1] = grown[:, :, 1:]
    fin_scores, pick = torch.cat([fin_scores, new], 1).topk(k)
    fin_seqs = torch.cat([fin_seqs, done], 1).gather(1, pick[:, :, None].expand(-1, -1, max_len))
    if not bool((live[:, 0] / penalty(max_len) > fin_scores[:, -1]).any()):
      break
  none = fin_scores[:, 0] == -float("inf")
  tokens = torch.zeros((b, max_len), dtype=torch.long)
  tokens[:, :seqs.shape[1] - 1] = seqs.view(b, k, -1)[:, 0, 1:]
  return (torch.where(none[:, None], tokens, fin_seqs[:, 0]),
          torch.where(none, live[:, 0] / penalty(max_len), fin_scores[:, 0]))


def _data(cfg, rng, batch):
  src = rng.integers(4, cfg["vocab"], (batch, cfg["src_len"]))
  tgt = rng.integers(4, cfg["vocab"], (batch, cfg["tgt_len"] + 1))
  src[::4, cfg["src_len"] * 2 // 3:] = PAD  # some padding, as in real batches
  tgt[:, 0] = BOS
  return src.astype(np.int32), tgt.astype(np.int32)


def _model(cfg, dropout):
  return models.create("transformer", vocab_size=cfg["vocab"], num_layers=cfg["layers"],
                       d_model=cfg["d"], num_heads=cfg["heads"], mlp_dim=cfg["ff"],
                       dropout_rate=dropout, final_norm=True, max_len=256)


def train_competitors(cfg, seed=0, xla=False, rbg=True):
  """name -> one blocking training step: "ours" (a `harness.JaxStep`), "ours-rbg" (if
  `rbg`), "ours-xla" (if `xla`), "torch"."""
  variants = [("ours", None, "auto")] + ([("ours-rbg", "rbg", "auto")] if rbg else [])
  if xla:
    variants.append(("ours-xla", None, "xla"))
  competitors = {name: _jax_train_step(cfg, seed, impl, mode) for name, impl, mode in variants}
  competitors["torch"] = _torch_train_step(cfg, seed)
  return competitors


def _jax_train_step(cfg, seed, impl, mode):
  src, tgt = _data(cfg, np.random.default_rng(seed), cfg["batch"])
  model = _model(cfg, 0.1)
  tx = optax.adam(5e-4)
  key = jax.random.key(seed, impl=impl)
  return harness.translation_train_step(model, tx, src, tgt, key, PAD, mode)


def _torch_train_step(cfg, seed):
  src, tgt = _data(cfg, np.random.default_rng(seed), cfg["batch"])
  torch.manual_seed(seed)
  tmodel = TorchTranslator(cfg, 0.1).train()
  opt = torch.optim.Adam(tmodel.parameters(), lr=5e-4)
  src_t, tgt_t = torch.from_numpy(src).long(), torch.from_numpy(tgt).long()

  def torch_step():
    opt.zero_grad(set_to_none=True)
    logits = tmodel(src_t, tgt_t[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg["vocab"]),
                                             tgt_t[:, 1:].reshape(-1), ignore_index=PAD)
    loss.backward()
    opt.step()

  return torch_step


def decode_competitors(cfg, alpha=0.6, seed=0):
  """name -> one blocking beam-search decode of a batch; checks both give the same output."""
  src, _ = _data(cfg, np.random.default_rng(seed + 1), cfg["decode_batch"])
  model = _model(cfg, 0.0)
  variables = jax.jit(model.init)(jax.random.key(seed), src, src[:, :2])
  generate = jax.jit(functools.partial(decode.generate, model, max_len=cfg["max_len"],
                                       beam_size=cfg["beam"], alpha=alpha))
  tmodel = TorchTranslator(cfg, 0.0).eval()
  tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                          transformer_to_torch(variables["params"]).items()})
  src_j, src_t = jnp.asarray(src), torch.from_numpy(src).long()
  ours_tokens, ours_scores = generate(variables, src_j)
  torch_tokens, torch_scores = torch_beam_search(tmodel, src_t, cfg["beam"], cfg["max_len"], alpha)
  same = np.mean(np.all(np.asarray(ours_tokens) == torch_tokens.numpy(), 1))
  err = np.max(np.abs(np.asarray(ours_scores) - torch_scores.numpy()))
  print(f"decode check: {same:.0%} of sentences identical, max score difference {err:.2e}")

  def ours():
    jax.block_until_ready(generate(variables, src_j))

  def torch_decode():
    torch_beam_search(tmodel, src_t, cfg["beam"], cfg["max_len"], alpha)

  return {"ours": ours, "torch": torch_decode}


def main():
  parser = harness.torch_comparison_parser(__doc__)
  parser.add_argument("--parts", default="train,decode")
  parser.add_argument("--xla", action="store_true",
                      help="also time the train step traced with accel='xla' (plain XLA)")
  args = parser.parse_args()
  cfg = TINY if args.tiny else FULL
  harness.setup_torch_comparison(args)
  shape = (f"{cfg['layers']}+{cfg['layers']} layers, D={cfg['d']}, H={cfg['heads']}, "
           f"FF={cfg['ff']}, V={cfg['vocab']}")
  for part in args.parts.split(","):
    if part == "train":
      times = harness.interleave(train_competitors(cfg, xla=args.xla), rounds=args.rounds,
                                 steps=args.steps, warmup=2)
      print(harness.table(times, "torch", f"train step: {shape}, B={cfg['batch']}, "
                                          f"{cfg['src_len']}+{cfg['tgt_len']} tokens, Adam"))
    elif part == "decode":
      times = harness.interleave(decode_competitors(cfg), rounds=args.rounds, steps=args.steps,
                                 warmup=1)
      title = (f"beam search: {shape}, {cfg['decode_batch']} sentences, K={cfg['beam']}, "
               f"max_len={cfg['max_len']}")
      print(harness.table(times, "torch", title))
      rates = {k: cfg["decode_batch"] / np.median(t) for k, t in times.items()}
      print("sentences/s: " + ", ".join(f"{k} {r:.1f}" for k, r in rates.items()))
    else:
      raise ValueError(f"--parts: unknown part {part!r}; allowed: train, decode")
    print(flush=True)


if __name__ == "__main__":
  main()
