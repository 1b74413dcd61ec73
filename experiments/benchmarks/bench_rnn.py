"""Training-step time of recurrent language models: cnnrnn vs PyTorch eager vs naive Flax.

A step is forward + backward + SGD update, float32, no dropout. Competitors:
  ours        cnnrnn RNNLM: input projection hoisted out of the loop + the custom VJP
              (recurrent-weight gradient as one matmul after the backward loop); jit, donate.
  ours-ad     the same driver differentiated by plain autodiff (custom_vjp=False).
  flax-naive  flax.linen.RNN over flax.linen.LSTMCell / GRUCell (per-step input matmul).
  torch       torch.nn.Embedding + nn.LSTM / nn.GRU + nn.Linear, eager, torch.optim.SGD.

Competitors run interleaved (A B C D A B C D ...) so that load from other processes hits
all of them alike; the table gives the median and the spread (min-max) in ms per step and
torch/ours (above 1: ours faster).

  python experiments/benchmarks/bench_rnn.py [--rounds 15] [--configs lstm_lm,gru_lm,char_lstm]
"""

import argparse
import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from cnnrnn.models.rnn_lm import RNNLM

CONFIGS = {
    # Zaremba et al. 2014 medium: 2x650, unroll 35, batch 20, 10k vocabulary.
    "lstm_lm": dict(cell="lstm", hidden=650, layers=2, seq=35, batch=20, vocab=10000),
    "gru_lm": dict(cell="gru", hidden=650, layers=2, seq=35, batch=20, vocab=10000),
    # Character LSTM on Tiny Shakespeare: 512 units, 128 steps, batch 64, 65 characters.
    "char_lstm": dict(cell="lstm", hidden=512, layers=1, seq=128, batch=64, vocab=65),
}


class NaiveLM(nn.Module):
  """The straightforward Flax LM: nn.RNN over Flax's own cells, one step at a time."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  cell: str

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.hidden_size)(tokens)
    cell_cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[self.cell]
    for _ in range(self.num_layers):
      x = nn.RNN(cell_cls(self.hidden_size))(x)
    return nn.Dense(self.vocab_size)(x)


def jax_step_fn(model, lr=0.1):
  """A jitted SGD step (params, tokens, targets) -> (params, loss), params donated."""

  def loss_fn(params, tokens, targets):
    out = model.apply({"params": params}, tokens)
    logits = out[0] if isinstance(out, tuple) else out
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @functools.partial(jax.jit, donate_argnums=0)
  def step(params, tokens, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

  return step


class TorchLM(torch.nn.Module):

  def __init__(self, vocab, hidden, layers, cell):
    super().__init__()
    self.embed = torch.nn.Embedding(vocab, hidden)
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    self.rnn = rnn_cls(hidden, hidden, num_layers=layers, batch_first=True)
    self.head = torch.nn.Linear(hidden, vocab)

  def forward(self, tokens):
    return self.head(self.rnn(self.embed(tokens))[0])


def make_competitors(cfg, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), dtype=np.int32)
  targets = rng.integers(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), dtype=np.int32)
  tok_j, tgt_j = jnp.asarray(tokens), jnp.asarray(targets)
  competitors = {}

  def jax_runner(model):
    params = model.init(jax.random.key(seed), tok_j)["params"]
    step = jax_step_fn(model)
    state = {"params": params}

    def run():
      state["params"], loss = step(state["params"], tok_j, tgt_j)
      jax.block_until_ready(loss)

    return run

  lm = dict(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], num_layers=cfg["layers"],
            cell=cfg["cell"])
  competitors["ours"] = jax_runner(RNNLM(**lm))
  competitors["ours-ad"] = jax_runner(RNNLM(**lm, custom_vjp=False))
  competitors["flax-naive"] = jax_runner(NaiveLM(**lm))

  torch.manual_seed(seed)
  tmodel = TorchLM(cfg["vocab"], cfg["hidden"], cfg["layers"], cfg["cell"])
  opt = torch.optim.SGD(tmodel.parameters(), lr=0.1)
  tok_t, tgt_t = torch.from_numpy(tokens).long(), torch.from_numpy(targets).long()

  def torch_run():
    opt.zero_grad(set_to_none=True)
    logits = tmodel(tok_t)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg["vocab"]), tgt_t.reshape(-1))
    loss.backward()
    opt.step()

  competitors["torch"] = torch_run
  return competitors


def bench(name, cfg, rounds, warmup=2):
  competitors = make_competitors(cfg)
  for run in competitors.values():  # Compile / warm up.
    for _ in range(warmup):
      run()
  times = {k: [] for k in competitors}
  for _ in range(rounds):
    for k, run in competitors.items():
      t0 = time.perf_counter()
      run()
      times[k].append(1e3 * (time.perf_counter() - t0))
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--configs", default=",".join(CONFIGS))
  args = parser.parse_args()
  print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"devices {jax.devices()}")
  header = f"{'config':<10} {'competitor':<11} {'median ms':>10} {'min-max ms':>16} {'torch/this':>11}"
  print(header)
  print("-" * len(header))
  for name in args.configs.split(","):
    times = bench(name, CONFIGS[name], args.rounds)
    torch_med = statistics.median(times["torch"])
    for k, ts in times.items():
      med = statistics.median(ts)
      print(f"{name:<10} {k:<11} {med:10.1f} {min(ts):7.1f}-{max(ts):<8.1f} "
            f"{torch_med / med:11.2f}", flush=True)


if __name__ == "__main__":
  main()
