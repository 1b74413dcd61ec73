"""A PyTorch Transformer in the style of bentrevett/pytorch-seq2seq's tutorial 6, trained on
exactly cnnrnn's Multi30k batches, to tell a model/recipe gap from a data/token gap.

  PYTHONPATH=$PWD taskset -c 0 python experiments/translation/torch_reference.py \
      --config_json=workdirs/translation/tf128/config.json --init=xavier --epochs=2 \
      --out=workdirs/translation/torchref/xavier.jsonl

Data: the run's own `config.json` (dataset block, batch_size, eval_batch_size, seed) read
through cnnrnn's translation pipeline (`translation.load_pairs`, `translation.TrainBatches`,
`translation.eval_batches`): the same tokenisers, the same training batches in the same
order, the same validation batches. Nothing is re-prepared (the prepared data and the
tokenisers stored beside it are reused).

Model (written from the tutorial's description, not its text): post-LN encoder-decoder,
token embeddings scaled by sqrt(D) plus a learned position table (100 rows), dropout on
their sum, after every sublayer (before the residual sum), on the attention weights and
after the FFN's ReLU; LayerNorm eps 1e-5; no final LayerNorm after either stack; a
separate (untied) output Linear. The layers are written here rather than taken from
`torch.nn.Transformer*`: those fuse q/k/v into one [3D, D] `in_proj_weight`, whose xavier
bound (sqrt(6 / 4D)) is not the tutorial's per-matrix one (sqrt(6 / 2D)), and
`nn.Transformer` adds a final LayerNorm to each stack. `--init=xavier`: xavier_uniform_ on
every parameter with more than one dimension (embeddings included; biases and LayerNorms
keep torch's defaults), the tutorial's init. `--init=default`: torch's own defaults
(embeddings N(0, 1), Linear kaiming-uniform).

Training: Adam 5e-4 (torch defaults otherwise), gradient norm clipped to 1, cross-entropy
averaged over real target tokens (padding positions and the padding rows that fill the last
batch of an epoch are ignored). After each epoch (`--steps_per_epoch` can shorten one) the
validation split is scored as cnnrnn's trainer scores it:
- `nll`: teacher-forced cross-entropy per real target token, EOS included (the translation
  task's `nll`: positions < tgt_lengths of rows with mask 1);
- `bleu_tok`, `bleu`: greedy decoding (at most the task's max_decode_len tokens, EOS
  included) scored by `cnnrnn.tasks.translation.translation_metrics`.
One JSON line per epoch is appended to `--out`. `--deadline` ends the run early, with the
last epoch evaluated as a partial one (`partial_epoch`, `epoch_updates`).
"""

import json
import math
import os
import time

from absl import app
from absl import flags
import ml_collections
import numpy as np
import torch
from torch import nn

from cnnrnn import data
from cnnrnn.data import translation as tr
from cnnrnn.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from cnnrnn.tasks.translation import translation_metrics

_CONFIG_JSON = flags.DEFINE_string("config_json", "workdirs/translation/tf128/config.json",
                                   "config.json of the cnnrnn run whose data to reuse.")
_INIT = flags.DEFINE_enum("init", "xavier", ["xavier", "default"],
                          "xavier: the tutorial's xavier_uniform_ on every parameter with "
                          "dim > 1; default: torch's own initialisers.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Training epochs.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", 0,
                                        "Updates per epoch (0: the whole epoch); fewer "
                                        "evaluates after a partial epoch.")
_EVAL_SENTENCES = flags.DEFINE_integer("eval_sentences", 0,
                                       "Decode only this many validation sentences (0: all; "
                                       "a smoke test's shortcut, not comparable).")
_DEADLINE = flags.DEFINE_float("deadline", 0.0,
                               "Unix time by which the last evaluation must end (0: none): an "
                               "epoch stops early, and is evaluated as a partial epoch, when "
                               "its evaluation (the last one's time, else --eval_guess) would "
                               "end later.")
_EVAL_GUESS = flags.DEFINE_float("eval_guess", 150.0, "Seconds one evaluation is assumed to "
                                 "take before one has been timed (--deadline).")
_THREADS = flags.DEFINE_integer("threads", 1, "torch intra-op threads.")
_SEED = flags.DEFINE_integer("seed", 0, "torch seed (parameters, dropout).")
_OUT = flags.DEFINE_string("out", None, "JSON lines file to append per-epoch metrics to.",
                           required=True)

LR, CLIP, MAX_POSITIONS = 5e-4, 1.0, 100
D_MODEL, HEADS, FFN, LAYERS, DROPOUT = 256, 8, 512, 3, 0.1


class MultiHeadAttention(nn.Module):
  """Scaled dot-product attention over H heads with q/k/v/output Linears (with biases)."""

  def __init__(self, d_model: int, heads: int, dropout: float):
    super().__init__()
    self.heads, self.head_dim = heads, d_model // heads
    self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
    self.o = nn.Linear(d_model, d_model)
    self.dropout = nn.Dropout(dropout)

  def forward(self, query, key, value, mask):
    """query [B, T, D], key/value [B, S, D], mask broadcastable to [B, H, T, S] (True:
    attend) -> [B, T, D]."""
    b = query.shape[0]
    split = lambda x: x.view(b, -1, self.heads, self.head_dim).transpose(1, 2)
    q, k, v = split(self.q(query)), split(self.k(key)), split(self.v(value))
    energy = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # [B, H, T, S]
    energy = energy.masked_fill(~mask, -1e10)
    weights = self.dropout(torch.softmax(energy, dim=-1))
    out = (weights @ v).transpose(1, 2).reshape(b, -1, self.heads * self.head_dim)
    return self.o(out)


class FeedForward(nn.Module):
  """Linear -> ReLU -> dropout -> Linear."""

  def __init__(self, d_model: int, hidden: int, dropout: float):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(hidden, d_model))

  def forward(self, x):
    return self.net(x)


class EncoderLayer(nn.Module):
  """Post-LN: x = LN(x + dropout(sublayer(x))) for self-attention, then the FFN."""

  def __init__(self):
    super().__init__()
    self.attn = MultiHeadAttention(D_MODEL, HEADS, DROPOUT)
    self.attn_norm, self.ffn_norm = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
    self.ffn = FeedForward(D_MODEL, FFN, DROPOUT)
    self.dropout = nn.Dropout(DROPOUT)

  def forward(self, x, src_mask):
    x = self.attn_norm(x + self.dropout(self.attn(x, x, x, src_mask)))
    return self.ffn_norm(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
  """Post-LN: causal self-attention, cross-attention, FFN."""

  def __init__(self):
    super().__init__()
    self.self_attn = MultiHeadAttention(D_MODEL, HEADS, DROPOUT)
    self.cross_attn = MultiHeadAttention(D_MODEL, HEADS, DROPOUT)
    self.ffn = FeedForward(D_MODEL, FFN, DROPOUT)
    self.norms = nn.ModuleList(nn.LayerNorm(D_MODEL) for _ in range(3))
    self.dropout = nn.Dropout(DROPOUT)

  def forward(self, y, memory, tgt_mask, src_mask):
    y = self.norms[0](y + self.dropout(self.self_attn(y, y, y, tgt_mask)))
    y = self.norms[1](y + self.dropout(self.cross_attn(y, memory, memory, src_mask)))
    return self.norms[2](y + self.dropout(self.ffn(y)))


class Seq2SeqTransformer(nn.Module):
  """3+3-layer post-LN Transformer, D 256, 8 heads, FFN 512, learned positions."""

  def __init__(self, src_vocab: int, tgt_vocab: int):
    super().__init__()
    self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, D_MODEL), nn.Embedding(tgt_vocab,
                                                                                    D_MODEL)
    self.src_pos = nn.Embedding(MAX_POSITIONS, D_MODEL)
    self.tgt_pos = nn.Embedding(MAX_POSITIONS, D_MODEL)
    self.encoder = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))
    self.decoder = nn.ModuleList(DecoderLayer() for _ in range(LAYERS))
    self.head = nn.Linear(D_MODEL, tgt_vocab)
    self.dropout = nn.Dropout(DROPOUT)

  def _embed(self, tokens, embed, pos):
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
    return self.dropout(embed(tokens) * math.sqrt(D_MODEL) + pos(positions))

  def encode(self, src):
    """src [B, S] -> (memory [B, S, D], src_mask [B, 1, 1, S])."""
    src_mask = (src != PAD_ID)[:, None, None, :]
    x = self._embed(src, self.src_embed, self.src_pos)
    for layer in self.encoder:
      x = layer(x, src_mask)
    return x, src_mask

  def decode(self, tgt_in, memory, src_mask):
    """tgt_in [B, T] -> logits [B, T, V_tgt]; the causal mask also hides right-padding."""
    t = tgt_in.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=tgt_in.device))
    tgt_mask = (tgt_in != PAD_ID)[:, None, None, :] & causal[None, None]
    y = self._embed(tgt_in, self.tgt_embed, self.tgt_pos)
    for layer in self.decoder:
      y = layer(y, memory, tgt_mask, src_mask)
    return self.head(y)

  def forward(self, src, tgt_in):
    memory, src_mask = self.encode(src)
    return self.decode(tgt_in, memory, src_mask)


def targets_of(batch: dict) -> torch.Tensor:
  """tgt_out [B, T] with every position the translation task's loss ignores set to PAD
  (positions >= tgt_lengths and every row of a padding example, mask 0)."""
  tgt = batch["tgt_out"].astype(np.int64)
  t = tgt.shape[1]
  real = (np.arange(t)[None] < batch["tgt_lengths"][:, None]) & (batch["mask"][:, None] > 0)
  return torch.from_numpy(np.where(real, tgt, PAD_ID))


def validation_nll(model, batches) -> float:
  """Teacher-forced cross-entropy per real target token (EOS included)."""
  total, count = 0.0, 0
  model.eval()
  with torch.no_grad():
    for batch in batches:
      logits = model(torch.from_numpy(batch["src"]).long(),
                     torch.from_numpy(batch["tgt_in"]).long())
      targets = targets_of(batch)
      total += nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                           ignore_index=PAD_ID, reduction="sum").item()
      count += int((targets != PAD_ID).sum())
  return total / count


def greedy_decode(model, src: torch.Tensor, max_len: int) -> np.ndarray:
  """src [B, S] -> ids [B, max_len]: argmax tokens, EOS, then PAD (the decoder re-reads the
  whole prefix each step; no cache, identical results)."""
  memory, src_mask = model.encode(src)
  b = src.shape[0]
  tokens = torch.full((b, 1), BOS_ID, dtype=torch.long)
  done = torch.zeros(b, dtype=torch.bool)
  for _ in range(max_len):
    logits = model.decode(tokens, memory, src_mask)[:, -1]
    nxt = torch.where(done, torch.full_like(done, PAD_ID, dtype=torch.long), logits.argmax(-1))
    tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    done |= nxt == EOS_ID
    if bool(done.all()):
      break
  out = np.zeros((b, max_len), np.int32)
  out[:, : tokens.shape[1] - 1] = tokens[:, 1:].numpy()
  return out


def validation_bleu(model, split: tr.PairedSplit, batches, tgt_tokenizer, max_len: int,
                    limit: int) -> dict:
  """`translation_metrics` of greedy translations of the split (or its first `limit`
  sentences by index)."""
  model.eval()
  keep = len(split) if not limit else min(limit, len(split))
  hypotheses: list = [None] * keep
  with torch.no_grad():
    for batch in batches:
      rows = (batch["mask"] > 0) & (batch["index"] < keep)
      if not rows.any():
        continue
      ids = greedy_decode(model, torch.from_numpy(batch["src"][rows]).long(), max_len)
      for row, i in zip(ids, batch["index"][rows]):
        hypotheses[int(i)] = row
  metrics = translation_metrics(hypotheses, split.references[:keep], tgt_tokenizer)
  return {"bleu": metrics["bleu"], "bleu_tok": metrics["bleu_tok"]}


def initialise(model: nn.Module, init: str) -> None:
  """The tutorial's init (xavier_uniform_ on every parameter with dim > 1), or torch's."""
  if init == "xavier":
    for p in model.parameters():
      if p.dim() > 1:
        nn.init.xavier_uniform_(p)


def main(argv):
  del argv
  torch.set_num_threads(_THREADS.value)
  torch.manual_seed(_SEED.value)
  with open(_CONFIG_JSON.value, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  ds_cfg = config.dataset
  dataset = data.load(ds_cfg.name, ds_cfg.get("data_dir"), ds_cfg.get("manual_dir"))
  pairs = tr.load_pairs(ds_cfg, dataset)
  width = ds_cfg.get("bucket_width", 8)
  train = tr.TrainBatches(pairs.split(ds_cfg.train_split), global_batch_size=config.batch_size,
                          seed=config.seed, max_length=pairs.max_length, bucket_width=width,
                          bucket_pool=ds_cfg.get("bucket_pool", 100))
  eval_split = pairs.split(ds_cfg.eval_split)
  eval_batches = list(tr.eval_batches(eval_split, global_batch_size=config.eval_batch_size,
                                      max_length=pairs.max_length, bucket_width=width))
  max_decode_len = config.task.get("max_decode_len") or pairs.max_length
  model = Seq2SeqTransformer(pairs.source_tokenizer.vocab_size,
                             pairs.target_tokenizer.vocab_size)
  initialise(model, _INIT.value)
  optimizer = torch.optim.Adam(model.parameters(), lr=LR)
  steps = _STEPS_PER_EPOCH.value or len(train)
  print(f"vocab {pairs.source_tokenizer.vocab_size}/{pairs.target_tokenizer.vocab_size}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {len(train)} batches "
        f"per epoch, {steps} per trained epoch", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  total_steps = 0
  start, eval_estimate = time.perf_counter(), _EVAL_GUESS.value
  for epoch in range(_EPOCHS.value):
    model.train()
    epoch_start, loss_sum, token_sum, updates = time.perf_counter(), 0.0, 0, 0
    for j in range(steps):
      if _DEADLINE.value and time.time() + 1.2 * eval_estimate > _DEADLINE.value:
        print(f"stopping epoch {epoch + 1} after {j} updates: --deadline", flush=True)
        break
      # Batch b of cnnrnn's stream is batch b % len of epoch b // len: the run's own order.
      batch = train[epoch * len(train) + j]
      targets = targets_of(batch)
      logits = model(torch.from_numpy(batch["src"]).long(),
                     torch.from_numpy(batch["tgt_in"]).long())
      loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                         ignore_index=PAD_ID)
      optimizer.zero_grad()
      loss.backward()
      nn.utils.clip_grad_norm_(model.parameters(), CLIP)
      optimizer.step()
      n = int((targets != PAD_ID).sum())
      loss_sum, token_sum, updates = loss_sum + loss.item() * n, token_sum + n, j + 1
      if (j + 1) % 50 == 0:
        print(f"epoch {epoch + 1} step {j + 1}/{steps} train loss {loss_sum / token_sum:.4f} "
              f"({time.perf_counter() - epoch_start:.0f}s)", flush=True)
    if not updates:
      break
    train_seconds = time.perf_counter() - epoch_start
    eval_start = time.perf_counter()
    nll = validation_nll(model, eval_batches)
    bleu = validation_bleu(model, eval_split, eval_batches, pairs.target_tokenizer,
                           max_decode_len, _EVAL_SENTENCES.value)
    eval_estimate = time.perf_counter() - eval_start
    total_steps += updates
    row = {"epoch": epoch + 1, "step": total_steps, "epoch_updates": updates,
           "init": _INIT.value, "split": ds_cfg.eval_split, "partial_epoch": updates < len(train),
           "train_loss": loss_sum / max(token_sum, 1), "nll": nll, **bleu,
           "eval_sentences": _EVAL_SENTENCES.value or len(eval_split),
           "train_seconds": train_seconds, "eval_seconds": eval_estimate,
           "wall_seconds": time.perf_counter() - start, "threads": _THREADS.value,
           "config_json": _CONFIG_JSON.value}
    print(json.dumps(row), flush=True)
    with open(_OUT.value, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    if updates < steps:
      break


if __name__ == "__main__":
  app.run(main)
