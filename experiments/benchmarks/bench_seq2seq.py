"""Attention seq2seq training step: cnnrnn vs PyTorch eager (pytorch-seq2seq tutorial 3/4).

Model (both sides): embedding 256 -> bidirectional GRU encoder 512 -> initial decoder state
tanh(W [h_fwd; h_bwd] + b); decoder: embedding 256, Bahdanau attention (width 512) from the
previous decoder state over the encoder outputs (padding masked), GRU 512 on [y; context],
output layer on [h; context; y] to the vocabulary; dropout 0.5 on both embeddings.

  train   one step = forward + backward + Adam update on B=128 pairs of 30+30 tokens,
          vocabulary 8000, cross-entropy ignoring pad, full teacher forcing (the tutorial
          uses a teacher-forcing ratio of 0.5; 1.0 here so both sides compute the same).
          ours: `seq2seq` variant `ptseq2seq_bahdanau`, optax.adam, jit with donated state,
          traced under `accel="auto"` as the trainer does (`--xla` adds ours-xla: plain XLA).
          torch: the tutorial's modules (nn.Embedding, bidirectional nn.GRU over packed
          sequences as in tutorial 4, the attention MLP on [s; h_j] and an nn.GRU decoder
          stepped by a Python loop over time), torch.optim.Adam, eager.

Interleaved A B A B (experiments/benchmarks/harness.py), medians; "speed vs torch" is the
torch median over ours (above 1: faster than PyTorch). Not a test. Smoke run:

    python experiments/benchmarks/bench_seq2seq.py --tiny
    python experiments/benchmarks/bench_seq2seq.py [--rounds=6] [--torch_threads=N]
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

if __name__ == "__main__":
  harness.xla_flags_from_argv(sys.argv)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from cnnrnn import models  # noqa: E402

PAD, BOS = 0, 2
FULL = dict(emb=256, hid=512, batch=128, src_len=30, tgt_len=30, vocab=8000, dropout=0.5)
TINY = dict(emb=8, hid=8, batch=4, src_len=6, tgt_len=5, vocab=50, dropout=0.5)


class TorchEncoder(torch.nn.Module):
  """Tutorial 3/4's encoder: embedding -> dropout -> packed BiGRU -> outputs, bridge."""

  def __init__(self, cfg):
    super().__init__()
    self.embedding = torch.nn.Embedding(cfg["vocab"], cfg["emb"])
    self.rnn = torch.nn.GRU(cfg["emb"], cfg["hid"], bidirectional=True, batch_first=True)
    self.fc = torch.nn.Linear(2 * cfg["hid"], cfg["hid"])
    self.dropout = torch.nn.Dropout(cfg["dropout"])

  def forward(self, src, lengths):
    x = self.dropout(self.embedding(src))  # [B, S, E]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False)
    packed_out, hidden = self.rnn(packed)
    outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True,
                                                        total_length=src.shape[1])
    hidden = torch.tanh(self.fc(torch.cat([hidden[-2], hidden[-1]], 1)))  # [B, H]
    return outputs, hidden  # [B, S, 2H], [B, H]


class TorchAttention(torch.nn.Module):
  """energy = v^T tanh(W [s; h_j]), padding masked, softmax over source positions."""

  def __init__(self, cfg):
    super().__init__()
    self.attn = torch.nn.Linear(3 * cfg["hid"], cfg["hid"])
    self.v = torch.nn.Linear(cfg["hid"], 1, bias=False)

  def forward(self, hidden, outputs, mask):
    s = hidden[:, None].expand(-1, outputs.shape[1], -1)  # [B, S, H]
    energy = torch.tanh(self.attn(torch.cat([s, outputs], 2)))
    scores = self.v(energy)[:, :, 0].masked_fill(~mask, -1e10)  # [B, S]
    return torch.softmax(scores, 1)


class TorchDecoder(torch.nn.Module):
  """One step: embedding -> dropout -> attention -> GRU on [y; c] -> fc_out([h; c; y])."""

  def __init__(self, cfg):
    super().__init__()
    self.attention = TorchAttention(cfg)
    self.embedding = torch.nn.Embedding(cfg["vocab"], cfg["emb"])
    self.rnn = torch.nn.GRU(2 * cfg["hid"] + cfg["emb"], cfg["hid"], batch_first=True)
    self.fc_out = torch.nn.Linear(3 * cfg["hid"] + cfg["emb"], cfg["vocab"])
    self.dropout = torch.nn.Dropout(cfg["dropout"])

  def forward(self, tokens, hidden, outputs, mask):
    y = self.dropout(self.embedding(tokens))  # [B, E]
    a = self.attention(hidden, outputs, mask)  # [B, S]
    context = torch.bmm(a[:, None], outputs)[:, 0]  # [B, 2H]
    out, h = self.rnn(torch.cat([y, context], 1)[:, None], hidden[None])
    h = h[0]
    return self.fc_out(torch.cat([h, context, y], 1)), h


class TorchSeq2Seq(torch.nn.Module):
  def __init__(self, cfg):
    super().__init__()
    self.encoder, self.decoder = TorchEncoder(cfg), TorchDecoder(cfg)

  def forward(self, src, tgt_in):
    """Teacher-forced logits [B, T, V], a Python loop over the T target steps."""
    mask = src != PAD
    outputs, hidden = self.encoder(src, mask.sum(1))
    logits = []
    for t in range(tgt_in.shape[1]):
      step_logits, hidden = self.decoder(tgt_in[:, t], hidden, outputs, mask)
      logits.append(step_logits)
    return torch.stack(logits, 1)


def step_flops(cfg) -> float:
  """Floating-point operations of one training step, counted by hand (XLA's cost analysis
  counts a scan body once): the products only, 2 per multiply-add, the backward pass twice
  the forward's."""
  b, s, t, e, h, v = (cfg[k] for k in ("batch", "src_len", "tgt_len", "emb", "hid", "vocab"))
  encoder = 2 * s * 2 * b * (e + h) * 3 * h  # both directions: [x; h] -> 3 gates
  encoder += 2 * b * 2 * h * h + 2 * b * s * 2 * h * h  # bridge; attention key projection
  step = 2 * b * h * h + 2 * b * s * h + 2 * b * s * 2 * h  # query projection, energy, context
  step += 2 * b * (e + 2 * h + h) * 3 * h + 2 * b * (3 * h + e) * v  # GRU; output layer
  return 3.0 * (encoder + t * step)


def _data(cfg, rng):
  src = rng.integers(4, cfg["vocab"], (cfg["batch"], cfg["src_len"]))
  tgt = rng.integers(4, cfg["vocab"], (cfg["batch"], cfg["tgt_len"] + 1))
  src[::4, cfg["src_len"] * 2 // 3:] = PAD  # some padding, as in real batches
  tgt[:, 0] = BOS
  return src.astype(np.int32), tgt.astype(np.int32)


def jax_train_step(cfg, seed, mode="auto"):
  """(ours: a `harness.JaxStep` under accel `mode`, its parameter count)."""
  src, tgt = _data(cfg, np.random.default_rng(seed))
  model = models.create("seq2seq", variant="ptseq2seq_bahdanau", vocab_size=cfg["vocab"],
                        embed_dim=cfg["emb"], hidden_size=cfg["hid"],
                        dropout_rate=cfg["dropout"])
  tx = optax.adam(1e-3)
  ours = harness.translation_train_step(model, tx, src, tgt, jax.random.key(seed), PAD, mode)
  return ours, sum(x.size for x in jax.tree.leaves(ours.state["params"]))


def torch_train_step(cfg, seed):
  """(the PyTorch step as a zero-argument callable, its parameter count)."""
  src, tgt = _data(cfg, np.random.default_rng(seed))
  torch.manual_seed(seed)
  tmodel = TorchSeq2Seq(cfg).train()
  opt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
  src_t, tgt_t = torch.from_numpy(src).long(), torch.from_numpy(tgt).long()
  n_params = sum(p.numel() for p in tmodel.parameters())

  def torch_step():
    opt.zero_grad(set_to_none=True)
    logits = tmodel(src_t, tgt_t[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg["vocab"]),
                                             tgt_t[:, 1:].reshape(-1), ignore_index=PAD)
    loss.backward()
    opt.step()

  return torch_step, n_params


def main():
  parser = harness.torch_comparison_parser(__doc__)
  parser.add_argument("--xla", action="store_true",
                      help="also time the step traced with accel='xla' (plain XLA)")
  args = parser.parse_args()
  cfg = TINY if args.tiny else FULL
  harness.setup_torch_comparison(args)
  ours, ours_params = jax_train_step(cfg, 0)
  theirs, torch_params = torch_train_step(cfg, 0)
  # The same architecture: the attention's query/key kernels are the halves of torch's
  # `attn` Linear, so the counts agree exactly.
  print(f"parameters: ours {ours_params:,}, torch {torch_params:,}")
  if ours_params != torch_params:
    raise SystemExit("the two models differ: parameter counts do not match")
  competitors = {"ours": ours}
  if args.xla:
    competitors["ours-xla"] = jax_train_step(cfg, 0, "xla")[0]
  times = harness.interleave({**competitors, "torch": theirs}, rounds=args.rounds,
                             steps=args.steps, warmup=2)
  print(harness.table(times, "torch", f"train step: BiGRU {cfg['hid']} + Bahdanau, "
                                      f"E={cfg['emb']}, V={cfg['vocab']}, B={cfg['batch']}, "
                                      f"{cfg['src_len']}+{cfg['tgt_len']} tokens, Adam"))


if __name__ == "__main__":
  main()
