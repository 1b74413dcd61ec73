"""Training-step time of recurrent language models: cnnrnn vs PyTorch eager vs naive Flax.

A step is forward + backward + SGD update, float32, no dropout, the same architecture on
every side (embedding -> L recurrent layers -> dense to the vocabulary, softmax
cross-entropy). Competitors:
  ours        cnnrnn RNNLM as `python -m cnnrnn.main` runs it (accel="auto"): on one CPU
              device with the native kernels, `cnnrnn.accel` runs the LSTM's time loop on
              them (forward kernel; backward kernel as the transpose of the loop's JVP),
              recurrent-weight gradient one matmul after the backward loop; jit, donate.
              GRU layers have no kernel: same as ours-xla for the GRU LM.
  ours-xla    the same step without acceleration: what a plain jax.jit(jax.grad(...)) of
              the model gets. The driver's fast path: input projection hoisted out of the
              loop, the loop's JVP rule (cnnrnn.nn.recurrence) transposed by JAX.
  ours-generic the same model with fast_path=False: Flax's generic scan over our cells,
              plain autodiff.
  ours-gather cnnrnn's StackedRNN fed embedded inputs table[ids] (as torch's nn.LSTM is),
              without RNNLM's projection of the embedding table (see cnnrnn.nn.RNN).
  flax-naive  flax.linen.RNN over flax.linen.LSTMCell / GRUCell (per-step input matmul).
  torch       torch.nn.Embedding + nn.LSTM / nn.GRU + nn.Linear, eager, torch.optim.SGD.

Host memory: by default the process first calls cnnrnn.train.host_memory.reuse_freed_memory(),
as `python -m cnnrnn.main` does (config.reuse_host_memory), so that each step's buffers do
not arrive on fresh pages. It applies to the whole process, PyTorch included;
`--malloc=default` keeps glibc's defaults.

Interleaved A B C D A B C D (experiments/benchmarks/harness.py), medians; the tables give
speed vs torch = torch median / competitor median (above 1: faster than PyTorch). Not a test.

    python experiments/benchmarks/bench_rnn.py [--rounds=6] [--configs=lstm_lm,gru_lm,char_lstm]
    taskset -c 0 python experiments/benchmarks/bench_rnn.py --torch_threads=1   # one core

PyTorch's OpenMP threads degrade badly when another process holds a core (a 2-thread
LSTM LM step went from ~0.7 s to 1-4 s); on a shared machine compare the one-core run too.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

if __name__ == "__main__":
  harness.xla_flags_from_argv(sys.argv)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from cnnrnn.models.rnn_lm import RNNLM  # noqa: E402
from cnnrnn.nn import StackedRNN  # noqa: E402

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


class GatheredLM(NaiveLM):
  """nn.Embed -> cnnrnn StackedRNN -> nn.Dense: our driver on embedded inputs."""

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.hidden_size)(tokens)
    x = StackedRNN(cell=self.cell, hidden_size=self.hidden_size, num_layers=self.num_layers)(x)
    return nn.Dense(self.vocab_size)(x)


def train_step(model, lr=0.1):
  """The SGD step (params, tokens, targets) -> (params, loss) of `model`."""

  def loss_fn(params, tokens, targets):
    out = model.apply({"params": params}, tokens)
    logits = out[1] if isinstance(out, tuple) else out  # RNNLM returns (carry, logits).
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  def step(params, tokens, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

  return step


class TorchLM(torch.nn.Module):
  """The same LM in PyTorch (nn.LSTM / nn.GRU use oneDNN/ATen fused kernels on CPU)."""

  def __init__(self, vocab, hidden, layers, cell):
    super().__init__()
    self.embed = torch.nn.Embedding(vocab, hidden)
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    self.rnn = rnn_cls(hidden, hidden, num_layers=layers, batch_first=True)
    self.head = torch.nn.Linear(hidden, vocab)

  def forward(self, tokens):
    return self.head(self.rnn(self.embed(tokens))[0])


def step_flops(cfg) -> float:
  """Floating-point operations of one training step, counted by hand (XLA's cost analysis
  counts a scan body once): the products only, 2 per multiply-add, the backward pass twice
  the forward's (input and weight gradients); embedding width = hidden width."""
  gates = {"lstm": 4, "gru": 3}[cfg["cell"]]
  tokens, hidden = cfg["batch"] * cfg["seq"], cfg["hidden"]
  forward = cfg["layers"] * 2 * tokens * (2 * hidden) * gates * hidden  # [x; h] -> gates
  forward += 2 * tokens * hidden * cfg["vocab"]  # output layer
  return 3.0 * forward


COMPETITORS = ("ours", "ours-xla", "ours-generic", "ours-gather", "flax-naive", "torch")


def make_competitors(cfg, seed=0, names=COMPETITORS):
  """name -> zero-argument callable running one blocking training step, for the `names`
  among `COMPETITORS` (the JAX ones `harness.JaxStep`s)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), dtype=np.int32)
  targets = rng.integers(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), dtype=np.int32)
  tok_j, tgt_j = jnp.asarray(tokens), jnp.asarray(targets)
  competitors = {}

  def jax_runner(model, mode="xla"):
    params = model.init(jax.random.key(seed), tok_j)["params"]
    return harness.JaxStep(train_step(model), params, tok_j, tgt_j, mode=mode)

  lm = dict(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], num_layers=cfg["layers"],
            cell=cfg["cell"])
  jax_models = {"ours": lambda: jax_runner(RNNLM(**lm), mode="auto"),
                "ours-xla": lambda: jax_runner(RNNLM(**lm)),
                "ours-generic": lambda: jax_runner(RNNLM(**lm, fast_path=False)),
                "ours-gather": lambda: jax_runner(GatheredLM(**lm)),
                "flax-naive": lambda: jax_runner(NaiveLM(**lm))}
  for name in names:
    if name in jax_models:
      competitors[name] = jax_models[name]()
  if "torch" not in names:
    return competitors

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


def main():
  parser = harness.torch_comparison_parser(__doc__, tiny=False)
  parser.add_argument("--configs", default=",".join(CONFIGS))
  args = parser.parse_args()
  affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
  harness.setup_torch_comparison(args, f"{affinity} usable cores, ")
  for name in args.configs.split(","):
    cfg = CONFIGS[name]
    times = harness.interleave(make_competitors(cfg), rounds=args.rounds, steps=args.steps,
                               warmup=2)
    title = (f"{name}: {cfg['cell']} {cfg['layers']}x{cfg['hidden']}, T={cfg['seq']}, "
             f"B={cfg['batch']}, V={cfg['vocab']}")
    print(harness.table(times, "torch", title))
    spread = {k: (1e3 * min(t), 1e3 * max(t)) for k, t in times.items()}
    print("min-max ms: " + ", ".join(f"{k} {lo:.0f}-{hi:.0f}" for k, (lo, hi) in spread.items()))
    print(flush=True)


if __name__ == "__main__":
  main()
