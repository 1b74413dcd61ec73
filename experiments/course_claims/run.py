"""The course's four claims about recurrent, attention and convolutional models, measured.

From the course's Transformer slide and outlook:

  speed      "Transformer training is ~100x faster than an RNN's (parallel vs sequential)":
             tokens/s of one jitted training step (forward, backward, Adam) of the LSTM
             seq2seq (`seq2seq`, no attention) and the Transformer (`transformer`) at matched
             parameter counts, for T = 16 ... 1024 source and target tokens, at a fixed
             number of tokens per batch (B = tokens / T, as a token-budget batcher gives).
  memory     "LSTM memory: low; Transformer memory: high (O(n^2))": the same two steps at a
             fixed batch, their memory from XLA's analysis of the compiled program
             (`jit(step).lower(...).compile().memory_analysis()`), plain XLA, nothing run.
  longrange  "long-range dependencies are easier for the Transformer": the adding problem
             (`cnnrnn.data.synthetic.adding_problem`) at T = 50 ... 400, the LSTM of
             configs/adding_problem.py (`rnn_classifier`) against a small Transformer
             encoder of about the same size (`AddingTransformer` below: the registry has no
             encoder-only sequence regressor), the same optimizer and step budget.
  latency    "CNNs are efficient for inference": batch-1 latency (median of many jitted
             calls), parameters and FLOPs of LeNet-5, ResNet-20 and the small ViT, built from
             the configs of experiments/lenet5_mnist, cifar_resnet and vit_vs_cnn, whose
             committed results give the accuracies (nothing is retrained here).

  python experiments/course_claims/run.py --part=all        # every part
  python experiments/course_claims/run.py --part=speed      # one part; the others are kept
  python experiments/course_claims/run.py --quick --out=claims_quick  # tiny sizes, a smoke run
  python experiments/course_claims/run.py --readme          # rows and README tables again

Each part writes its section of results.json (`parts.NAME`, merged with what the file
already holds) and its plot (NAME.png) into --out (default: this folder), and the report rows
(`python -m cnnrnn.report`) are rebuilt from every section present. Timings (speed, latency)
depend on the machine and its load: results.json records both.
"""

import os
import statistics
import sys
import time

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # configs/ is a package of the repository, not of cnnrnn.

from cnnrnn import accel, models  # noqa: E402
from cnnrnn.analysis import experiment_runs  # noqa: E402
from cnnrnn.analysis.params import count_params  # noqa: E402
from cnnrnn.data import synthetic  # noqa: E402
from cnnrnn.nn.transformer import PositionalEncoding, TransformerEncoder  # noqa: E402
from configs import adding_problem, cifar_resnet, cifar_vit_vs_cnn, lenet5_mnist  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ("speed", "memory", "longrange", "latency")
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, on absl's global FLAGS: defined when run as a program, not
  on import (the tests import this file beside cnnrnn.report, which has an --out flag)."""
  flags.DEFINE_enum("part", "all", PARTS + ("all",), "Which claim to measure.")
  flags.DEFINE_bool("quick", False, "Tiny sizes: a smoke run of seconds, not a result.")
  flags.DEFINE_string("out", HERE, "Folder for results.json and the plots.")
  flags.DEFINE_bool("readme", False, "Measure nothing: rebuild the report rows of "
                    "--out/results.json from its parts and the tables of --out/README.md.")
  flags.DEFINE_bool("loaded", True, "Record that other jobs shared the CPUs during the "
                    "timings (pass --noloaded on a quiet machine).")


PAD = 0
# The translation models of the speed and memory parts: the Transformer is fixed, the LSTM
# seq2seq's hidden width is chosen to match its parameter count (`matched_seq2seq`).
FULL = dict(
    seq=dict(lengths=(16, 32, 64, 128, 256, 512, 1024), vocab=256, d_model=128, layers=2,
             heads=4, mlp_dim=512, lstm_layers=2, dropout=0.1),
    speed=dict(tokens=2048, min_calls=3, min_seconds=1.0, max_calls=8),
    memory=dict(batch=8),
    # Batch 32, not the config's 64, and 300 steps: the Transformer's step at T=400 takes
    # seconds on two shared cores.
    longrange=dict(lengths=(50, 100, 200, 400), steps=300, batch=32, evals=6, num_test=1000,
                   d_model=64, layers=2, heads=2, mlp_dim=128),
    latency=dict(calls=200, rounds=10),
)
QUICK = dict(
    seq=dict(lengths=(8, 16, 32), vocab=32, d_model=16, layers=1, heads=2, mlp_dim=32,
             lstm_layers=1, dropout=0.1),
    speed=dict(tokens=64, min_calls=2, min_seconds=0.0, max_calls=2),
    memory=dict(batch=2),
    longrange=dict(lengths=(10, 20), steps=4, batch=8, evals=2, num_test=64, d_model=16,
                   layers=1, heads=2, mlp_dim=32),
    latency=dict(calls=4, rounds=2),
)


# ----------------------------------------------------------------------------- sequences


def transformer_model(s: dict) -> nn.Module:
  """The speed/memory Transformer: post-LN encoder-decoder, sinusoidal positions."""
  return models.create("transformer", vocab_size=s["vocab"], num_layers=s["layers"],
                       d_model=s["d_model"], num_heads=s["heads"], mlp_dim=s["mlp_dim"],
                       dropout_rate=s["dropout"], max_len=max(s["lengths"]))


def seq2seq_model(s: dict, hidden: int) -> nn.Module:
  """The LSTM seq2seq (no attention: encoder state -> decoder), embedding width D."""
  return models.create("seq2seq", vocab_size=s["vocab"], cell="lstm", embed_dim=s["d_model"],
                       hidden_size=hidden, num_layers=s["lstm_layers"],
                       dropout_rate=s["dropout"], attention="none")


def translation_params(model: nn.Module) -> int:
  """Parameter count of a translation model (shapes only, nothing allocated)."""
  tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
  return count_params(jax.eval_shape(model.init, jax.random.key(0), tokens, tokens))


def matched_seq2seq(s: dict) -> tuple[nn.Module, nn.Module, dict]:
  """The Transformer, and the LSTM seq2seq whose hidden width brings its parameter count
  nearest to the Transformer's; returns both and {lstm_params, transformer_params,
  lstm_hidden}."""
  transformer = transformer_model(s)
  target = translation_params(transformer)
  lo, hi = 1, 8 * s["d_model"]  # The count grows with the hidden width: bisect.
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if translation_params(seq2seq_model(s, mid)) <= target else (lo, mid)
  best = min(((h, translation_params(seq2seq_model(s, h))) for h in (lo, hi)),
             key=lambda hn: abs(hn[1] - target))
  hidden, n = best
  return seq2seq_model(s, hidden), transformer, dict(
      lstm_params=n, transformer_params=target, lstm_hidden=hidden)


def translation_step(model: nn.Module, tx: optax.GradientTransformation):
  """The trainer's step for a translation model: teacher forcing on tgt[:, :-1],
  cross-entropy against tgt[:, 1:] ignoring padding, dropout on, optimizer update.

  Returns:
    (init(key, src, tgt) -> state, step(state, src, tgt) -> (state, loss)); src [B, T],
    tgt [B, T + 1] int32.
  """

  def init(key, src, tgt):
    params = model.init(key, src, tgt[:, :-1])["params"]
    return {"params": params, "opt": tx.init(params), "key": key}

  def loss_fn(params, key, src, tgt):
    logits = model.apply({"params": params}, src, tgt[:, :-1], train=True,
                         rngs={"dropout": key})  # [B, T, V]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, tgt[:, 1:])
    weights = (tgt[:, 1:] != PAD).astype(losses.dtype)
    return (losses * weights).sum() / weights.sum()

  def step(state, src, tgt):
    key, sub = jax.random.split(state["key"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], sub, src, tgt)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt,
            "key": key}, loss

  return init, step


def token_batch(vocab: int, batch: int, length: int, seed: int = 0):
  """Random (src [B, T], tgt [B, T + 1]) token ids without padding; tgt starts with BOS."""
  rng = np.random.default_rng(seed)
  src = rng.integers(4, vocab, (batch, length)).astype(np.int32)
  tgt = rng.integers(4, vocab, (batch, length + 1)).astype(np.int32)
  tgt[:, 0] = 2
  return jnp.asarray(src), jnp.asarray(tgt)


def _timed_calls(fns: dict, min_calls: int, min_seconds: float, max_calls: int,
                 ) -> dict[str, list[float]]:
  """Calls each zero-argument function in turn (A B A B ...) until each has `min_calls`
  and, together, `min_seconds` per function, or `max_calls`; seconds per call."""
  times = {name: [] for name in fns}
  while True:
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
    n = len(next(iter(times.values())))
    if n >= max_calls or (n >= min_calls and all(sum(t) >= min_seconds for t in times.values())):
      return times


def part_speed(sizes: dict) -> dict:
  s, p = sizes["seq"], sizes["speed"]
  lstm, transformer, counts = matched_seq2seq(s)
  print(f"speed: LSTM seq2seq {counts['lstm_params']:,} parameters (hidden "
        f"{counts['lstm_hidden']}), Transformer {counts['transformer_params']:,}", flush=True)
  mode = accel.resolve("auto")
  tx = optax.adam(1e-3)
  rows = []
  for length in s["lengths"]:
    batch = max(1, p["tokens"] // length)
    src, tgt = token_batch(s["vocab"], batch, length)
    calls, compile_s = {}, {}
    for name, model in (("lstm", lstm), ("transformer", transformer)):
      init, step = translation_step(model, tx)
      holder = {"state": jax.jit(init)(jax.random.key(0), src, tgt)}
      t0 = time.perf_counter()
      compiled = jax.jit(accel.accelerate(step, mode), donate_argnums=0).lower(
          holder["state"], src, tgt).compile()
      compile_s[name] = time.perf_counter() - t0

      def call(compiled=compiled, holder=holder):
        holder["state"], loss = compiled(holder["state"], src, tgt)
        jax.block_until_ready(loss)

      call()  # Warm-up: allocator and caches.
      calls[name] = call
    times = _timed_calls(calls, p["min_calls"], p["min_seconds"], p["max_calls"])
    row = dict(T=length, batch=batch)
    for name, t in times.items():
      med = statistics.median(t)
      row[f"{name}_ms"] = round(med * 1e3, 2)
      row[f"{name}_tokens_per_s"] = round(batch * length / med, 1)
      row[f"{name}_compile_s"] = round(compile_s[name], 1)
      row[f"{name}_calls"] = len(t)
    row["ratio"] = round(row["transformer_tokens_per_s"] / row["lstm_tokens_per_s"], 3)
    rows.append(row)
    print(f"speed T={length} B={batch}: LSTM {row['lstm_tokens_per_s']:,.0f} tok/s, "
          f"Transformer {row['transformer_tokens_per_s']:,.0f} tok/s, ratio {row['ratio']:.2f}",
          flush=True)
  return dict(models=_model_text(s, counts), accel=mode, tokens_per_batch=p["tokens"],
              rows=rows, crossover=_crossover(rows), **counts)


def _crossover(rows: list[dict]) -> str:
  """Where the Transformer/LSTM speed ratio crosses 1, in words."""
  above = [r["T"] for r in rows if r["ratio"] >= 1]
  if not above:
    return "none: the LSTM seq2seq is faster at every T measured"
  if len(above) == len(rows):
    return "none: the Transformer is faster at every T measured"
  changes = [(a["T"], b["T"]) for a, b in zip(rows, rows[1:])
             if (a["ratio"] >= 1) != (b["ratio"] >= 1)]
  return "; ".join(f"between T={a} and T={b}" for a, b in changes)


def _model_text(s: dict, counts: dict) -> str:
  return (f"Transformer {s['layers']}+{s['layers']} layers, D {s['d_model']}, {s['heads']} heads, "
          f"FFN {s['mlp_dim']} ({counts['transformer_params']:,} parameters); LSTM seq2seq "
          f"{s['lstm_layers']}+{s['lstm_layers']} layers, embedding {s['d_model']}, hidden "
          f"{counts['lstm_hidden']}, no attention ({counts['lstm_params']:,} parameters); "
          f"vocabulary {s['vocab']}, dropout {s['dropout']}, Adam")


def part_memory(sizes: dict) -> dict:
  s, batch = sizes["seq"], sizes["memory"]["batch"]
  lstm, transformer, counts = matched_seq2seq(s)
  tx = optax.adam(1e-3)
  rows = []
  for length in s["lengths"]:
    src = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    tgt = jax.ShapeDtypeStruct((batch, length + 1), jnp.int32)
    row = dict(T=length, batch=batch)
    for name, model in (("lstm", lstm), ("transformer", transformer)):
      init, step = translation_step(model, tx)
      state = jax.eval_shape(init, jax.random.key(0), src, tgt)
      m = jax.jit(accel.accelerate(step, "xla"), donate_argnums=0).lower(
          state, src, tgt).compile().memory_analysis()
      row[f"{name}_temp"] = int(m.temp_size_in_bytes)
      row[f"{name}_argument"] = int(m.argument_size_in_bytes)
      row[f"{name}_output"] = int(m.output_size_in_bytes)
      row[f"{name}_alias"] = int(m.alias_size_in_bytes)
      # Live at once: the inputs, the outputs not written over donated inputs, the scratch.
      row[f"{name}_peak"] = int(m.argument_size_in_bytes + m.output_size_in_bytes
                                - m.alias_size_in_bytes + m.temp_size_in_bytes)
    rows.append(row)
    print(f"memory T={length}: LSTM {row['lstm_peak'] / 2**20:.1f} MiB, Transformer "
          f"{row['transformer_peak'] / 2**20:.1f} MiB", flush=True)
  for a, b in zip(rows, rows[1:]):
    for name in ("lstm", "transformer"):
      b[f"{name}_slope"] = round(float(np.log(b[f"{name}_temp"] / a[f"{name}_temp"])
                                       / np.log(b["T"] / a["T"])), 3)
  return dict(models=_model_text(s, counts), accel="xla", batch=batch, rows=rows,
              transformer_fit=_quadratic_fit(rows, "transformer_temp"),
              lstm_fit=_quadratic_fit(rows, "lstm_temp"), **counts)


def _quadratic_fit(rows: list[dict], key: str) -> dict:
  """Least squares temp(T) = a + b T + c T^2 over the rows, and the T = b / c from which the
  quadratic term is the larger of the two growing ones (None when c <= 0)."""
  t = np.array([r["T"] for r in rows], np.float64)
  y = np.array([r[key] for r in rows], np.float64)
  a, b, c = np.linalg.lstsq(np.stack([np.ones_like(t), t, t * t], 1), y, rcond=None)[0]
  return dict(a=float(a), b=float(b), c=float(c),
              quadratic_from_T=round(float(b / c), 1) if c > 0 and b > 0 else None)


# ----------------------------------------------------------------------------- long range


class AddingTransformer(nn.Module):
  """The smallest Transformer encoder for a many-to-one regression over [B, T, F] floats:
  a dense embedding, sinusoidal positions, a class token, pre-LN encoder blocks
  (`cnnrnn.nn.TransformerEncoder`, final LayerNorm), a dense head on the class token.

  Attributes:
    num_outputs: size of the head.
    d_model: D.
    num_layers: encoder blocks.
    num_heads: attention heads.
    mlp_dim: feed-forward width.
    max_len: longest sequence.
  """

  num_outputs: int = 1
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  max_len: int = 1024

  @nn.compact
  def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
    """[B, T, F] -> [B, num_outputs]."""
    x = nn.Dense(self.d_model, name="embed")(inputs)  # [B, T, D]
    x = PositionalEncoding("sinusoidal", self.max_len, name="pos")(x)
    cls = self.param("cls_token", nn.initializers.zeros_init(), (1, 1, self.d_model))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.d_model)), x], 1)
    block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm_first=True)
    x = TransformerEncoder(self.num_layers, block, final_norm=True, name="encoder")(
        x, None, train)  # [B, 1 + T, D]
    return nn.Dense(self.num_outputs, name="head")(x[:, 0])


def train_adding(model: nn.Module, length: int, config, steps: int, batch: int, evals: int,
                 num_test: int, mode: str) -> dict:
  """Trains `model` on the adding problem of length T with `config`'s optimizer (Adam,
  clipping), a fresh batch of `batch` sequences at every step (seed 0), and evaluates the
  MSE on `num_test` sequences of seed 1 at `evals` evenly spaced steps."""
  train = synthetic.adding_problem(steps * batch, length, seed=0)
  test = synthetic.adding_problem(num_test, length, seed=1)
  tx = optax.chain(optax.clip_by_global_norm(config.optimizer.clip_norm),
                   optax.adam(config.optimizer.learning_rate))
  x0 = jnp.asarray(train["inputs"][:1])
  params = jax.jit(model.init)(jax.random.key(config.seed), x0)["params"]
  state = (params, tx.init(params))

  def mse(params, x, y):
    return jnp.mean((model.apply({"params": params}, x, train=False) - y) ** 2)

  def step(state, x, y):
    params, opt = state
    loss, grads = jax.value_and_grad(mse)(params, x, y)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), loss

  step = jax.jit(accel.accelerate(step, mode), donate_argnums=0)
  evaluate = jax.jit(accel.accelerate(mse, mode))
  chunks = [(jnp.asarray(test["inputs"][i:i + 250]), jnp.asarray(test["targets"][i:i + 250]))
            for i in range(0, num_test, 250)]  # Bounds the [B, H, T, T] attention weights.

  def test_mse(params):
    return sum(float(evaluate(params, x, y)) * len(x) for x, y in chunks) / num_test

  at = sorted({max(1, round(steps * (i + 1) / evals)) for i in range(evals)})
  curve, b = [], batch
  start = time.perf_counter()
  for i in range(steps):
    state, _ = step(state, jnp.asarray(train["inputs"][i * b:(i + 1) * b]),
                    jnp.asarray(train["targets"][i * b:(i + 1) * b]))
    if i + 1 in at:
      curve.append((i + 1, round(test_mse(state[0]), 6)))
  return dict(params=count_params(params), test_mse=curve[-1][1], curve=curve,
              best_mse=min(v for _, v in curve), wall_s=round(time.perf_counter() - start, 1))


def part_longrange(sizes: dict) -> dict:
  p = sizes["longrange"]
  mode = accel.resolve("auto")
  rows = []
  for length in p["lengths"]:
    config = adding_problem.get_config(f"lstm,{length}")
    lstm = models.create(config.model.name, **{k: v for k, v in config.model.items()
                                               if k != "name"})
    transformer = AddingTransformer(config.model.num_outputs, p["d_model"], p["layers"],
                                    p["heads"], p["mlp_dim"], max_len=max(p["lengths"]))
    row = dict(T=length)
    for name, model in (("lstm", lstm), ("transformer", transformer)):
      r = train_adding(model, length, config, p["steps"], p["batch"], p["evals"],
                       p["num_test"], mode)
      row.update({f"{name}_{k}": v for k, v in r.items()})
      print(f"longrange T={length} {name}: test MSE {r['test_mse']:.4f} "
            f"({r['params']:,} parameters, {r['wall_s']:.0f} s)", flush=True)
    rows.append(row)
  config = adding_problem.get_config("lstm,100")
  return dict(steps=p["steps"], batch=p["batch"], accel=mode,
              optimizer=(f"Adam {config.optimizer.learning_rate}, global-norm clipping "
                         f"{config.optimizer.clip_norm} (the config's), batch {p['batch']}"),
              models=(f"LSTM: configs/adding_problem.py's rnn_classifier "
                      f"({config.model.hidden_size} units, head on the last step); "
                      f"Transformer: AddingTransformer (D {p['d_model']}, {p['layers']} pre-LN "
                      f"blocks, {p['heads']} heads, FFN {p['mlp_dim']}, class token)"),
              baseline_mse=round(2 / 12, 4), learned_below=0.01, rows=rows)


# ----------------------------------------------------------------------------- latency


def _model_from(config) -> nn.Module:
  return models.create(config.model.name, **{k: v for k, v in config.model.items()
                                             if k != "name"})


def _accuracy(experiment: str, row_id: str) -> dict:
  """Test accuracy (%) of a committed result row of experiments/EXPERIMENT."""
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "experiments", experiment, "results.json"), encoding="utf-8") as f:
    row = {r["id"]: r for r in json.load(f)["rows"]}[row_id]
  value = row["ours"] if "accuracy" in row["metric"] else 100 - row["ours"]
  return dict(accuracy=round(value, 2),
              accuracy_source=(f"experiments/{experiment}: {row['setting']} "
                               f"({row['metric']} {row['ours']})"))


LATENCY_MODELS = (
    # name, config, input [H, W, C], dataset, (experiment, row) of the accuracy
    ("LeNet-5", lambda: lenet5_mnist.get_config(), (32, 32, 1), "MNIST",
     ("lenet5_mnist", "lenet5")),
    ("ResNet-20", lambda: cifar_resnet.get_config("20,10000"), (32, 32, 3), "CIFAR-10",
     ("vit_vs_cnn", "resnet_100_long")),
    ("ViT (patch 4, D 128, depth 6)", lambda: cifar_vit_vs_cnn.get_config("vit,100,1400"),
     (32, 32, 3), "CIFAR-10", ("vit_vs_cnn", "vit_100_long")),
)


def part_latency(sizes: dict) -> dict:
  p = sizes["latency"]
  mode = accel.resolve("auto")
  calls, rows = {}, []
  for name, get_config, shape, dataset, (experiment, row_id) in LATENCY_MODELS:
    model = _model_from(get_config())
    image = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, *shape)), jnp.float32)
    variables = jax.jit(lambda k, x, model=model: model.init(k, x, train=False))(
        jax.random.key(0), image)

    def predict(variables, x, model=model):
      return model.apply(variables, x, train=False)

    flops = jax.jit(accel.accelerate(predict, "xla")).lower(variables, image).cost_analysis()
    fn = jax.jit(accel.accelerate(predict, mode))
    jax.block_until_ready(fn(variables, image))

    def call(fn=fn, variables=variables, image=image):
      jax.block_until_ready(fn(variables, image))

    for _ in range(3):
      call()
    calls[name] = call
    rows.append(dict(model=name, dataset=dataset, params=count_params(variables),
                     mflops=round(float(flops["flops"]) / 1e6, 2), **_accuracy(experiment, row_id)))
  per_round = max(1, p["calls"] // p["rounds"])
  times = {name: [] for name in calls}
  for _ in range(p["rounds"]):  # Rounds in turn, so that the load falls on every model alike.
    for name, call in calls.items():
      for _ in range(per_round):
        t0 = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - t0)
  for row in rows:
    t = np.array(times[row["model"]]) * 1e3
    row.update(median_ms=round(float(np.median(t)), 3),
               p10_ms=round(float(np.percentile(t, 10)), 3),
               p90_ms=round(float(np.percentile(t, 90)), 3), calls=len(t))
    print(f"latency {row['model']}: {row['median_ms']:.2f} ms median, {row['params']:,} "
          f"parameters, {row['mflops']} MFLOPs, accuracy {row['accuracy']}%", flush=True)
  return dict(accel=mode, rows=rows)


# ----------------------------------------------------------------------------- results


def report_rows(parts: dict) -> list[dict]:
  """The rows `python -m cnnrnn.report` shows, from the parts present."""
  rows = []
  cfg = "experiments/course_claims/run.py"
  if "speed" in parts:
    sp = parts["speed"]
    best = max(sp["rows"], key=lambda r: r["ratio"])
    last = sp["rows"][-1]
    rows.append(dict(
        id="speed_best", setting=f"training tokens/s, Transformer / LSTM seq2seq, best T "
        f"(T={best['T']})", config=f"{cfg}:speed", metric="speed ratio", unit="x", fmt=".2f",
        paper="~100x", ours=best["ratio"], label="Transformer / LSTM speed, best T",
        note=f"crossover: {sp['crossover']}; CPU only, GPU not measured"))
    rows.append(dict(
        id="speed_longest", setting=f"the same at T={last['T']}", config=f"{cfg}:speed",
        metric="speed ratio", unit="x", fmt=".2f", paper="~100x", ours=last["ratio"],
        label=f"at T={last['T']}", note=f"batch {last['batch']}"))
  if "memory" in parts:
    me = parts["memory"]
    last = me["rows"][-1]
    for name, label in (("lstm", "LSTM seq2seq"), ("transformer", "Transformer")):
      rows.append(dict(
          id=f"memory_{name}", setting=f"{label}: growth of the training step's scratch memory, "
          f"T={me['rows'][-2]['T']} -> {last['T']}", config=f"{cfg}:memory",
          metric="log-log slope (1 linear, 2 quadratic)", unit="", fmt=".2f",
          paper="low" if name == "lstm" else "O(n^2)", ours=last[f"{name}_slope"],
          label=f"memory slope, {label}",
          note=f"{last[f'{name}_peak'] / 2**20:.1f} MiB at T={last['T']}, batch {me['batch']}"))
  if "longrange" in parts:
    lr = parts["longrange"]
    for r in lr["rows"]:
      for name, label in (("lstm", "LSTM"), ("transformer", "Transformer encoder")):
        rows.append(dict(
            id=f"adding_{name}_{r['T']}", setting=f"adding problem T={r['T']}, {label}",
            config=(f"configs/adding_problem.py:lstm,{r['T']}" if name == "lstm"
                    else f"{cfg}:longrange"),
            metric=f"test MSE after {lr['steps']} steps", unit="", fmt=".4f",
            paper="easier" if name == "transformer" else "harder", ours=r[f"{name}_test_mse"],
            label=f"adding T={r['T']}, {label}",
            note=f"{r[f'{name}_params']:,} parameters; baseline {lr['baseline_mse']}"))
  if "latency" in parts:
    for r in parts["latency"]["rows"]:
      key = r["model"].split(" ")[0].lower().replace("-", "")
      rows.append(dict(
          id=f"latency_{key}", setting=f"{r['model']}, batch 1, {r['dataset']}",
          config=f"{cfg}:latency", metric="median latency", unit=" ms", fmt=".2f",
          paper=None, ours=r["median_ms"], label=f"{r['model'].split(' ')[0]} latency",
          note=f"{r['params']:,} parameters, {r['mflops']} MFLOPs, accuracy {r['accuracy']}%"))
  return rows


def _summary(parts: dict, rows: list[dict]) -> dict:
  """The reproductions table's line: the headline rows and, in words, what they show."""
  ids = {r["id"] for r in rows}
  longest = max((r["T"] for r in parts.get("longrange", {}).get("rows", [])), default=None)
  wanted = ["speed_best", "speed_longest", "memory_transformer", f"adding_lstm_{longest}",
            f"adding_transformer_{longest}", "latency_resnet20", "latency_vit"]
  notes = []
  if "speed" in parts:
    notes.append(f"speed crossover {parts['speed']['crossover']} (CPU; GPU not measured)")
  if "memory" in parts and parts["memory"]["transformer_fit"]["quadratic_from_T"]:
    notes.append(f"the Transformer's T^2 memory term exceeds its linear one from T = "
                 f"{parts['memory']['transformer_fit']['quadratic_from_T']:.0f}")
  if "longrange" in parts:
    notes.append(f"adding problem: test MSE after {parts['longrange']['steps']} steps "
                 f"(predicting the mean: {parts['longrange']['baseline_mse']})")
  return {"rows": [i for i in wanted if i in ids], "numeric_paper": False,
          "note": "; ".join(notes)}


def load_results(folder: str) -> dict:
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(folder, "results.json")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write(folder: str, part: str, section: dict, quick: bool, loaded: bool) -> dict:
  """Merges `section` into `folder`/results.json as parts[part] and rebuilds the rows."""
  results = load_results(folder)
  parts = results.get("parts", {})
  section["machine"] = (f"{experiment_runs.cpu_description()}, {os.cpu_count()} cores"
                        + (", shared with other jobs (loaded)" if loaded else ", quiet"))
  section["jax"] = jax.__version__
  section["quick"] = quick
  parts[part] = section
  results = assemble(parts)
  experiment_runs.write_results(folder, results)
  return results


def _hardware(parts: dict) -> str:
  """The machines of the parts: one, or each with the parts that ran on it."""
  machines = {}
  for name, part in parts.items():
    machines.setdefault(part["machine"], []).append(name)
  if len(machines) == 1:
    return next(iter(machines))
  return "; ".join(f"{', '.join(names)}: {machine}" for machine, names in machines.items())


def assemble(parts: dict) -> dict:
  """results.json from its parts: the report's fields and rows, then the parts themselves."""
  rows = report_rows(parts)
  return {
      "title": "The course's claims: Transformer vs LSTM (speed, memory, long range), CNNs "
               "at inference",
      "source": "experiments/course_claims/run.py (measured here; nothing from workdirs)",
      "paper": "the course's Transformer slide and outlook",
      "claim": "Transformer training ~100x faster, O(n^2) memory, long range easier; CNNs "
               "efficient for inference",
      "hardware": _hardware(parts),
      "wall_time": "; ".join(f"{k} {v['wall_s']:.0f} s" for k, v in parts.items()),
      "rows": rows,
      "summary": _summary(parts, rows),
      "order": 9,  # After the paper reproductions: the course's outlook.
      "parts": parts,
  }


# ----------------------------------------------------------------------------- README tables


def _mib(x: float) -> str:
  return f"{x / 2**20:,.1f}"


def tables(results: dict) -> dict[str, str]:
  """The README's generated tables, by part name, from results.json."""
  parts, out = results.get("parts", {}), {}
  if "speed" in parts:
    sp = parts["speed"]
    lines = [f"{sp['models']}; {sp['tokens_per_batch']:,} tokens per batch; accel "
             f"`{sp['accel']}`; {sp['machine']}, jax {sp['jax']}.", "",
             "| T | batch | LSTM seq2seq tokens/s | Transformer tokens/s | Transformer / LSTM "
             "| LSTM ms/step | Transformer ms/step |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sp["rows"]:
      lines.append(f"| {r['T']} | {r['batch']} | {r['lstm_tokens_per_s']:,.0f} | "
                   f"{r['transformer_tokens_per_s']:,.0f} | {r['ratio']:.2f}x | "
                   f"{r['lstm_ms']:,.1f} | {r['transformer_ms']:,.1f} |")
    lines += ["", f"Crossover (ratio 1): {sp['crossover']}. Part wall time {sp['wall_s']:.0f} s."]
    out["speed"] = "\n".join(lines) + "\n"
  if "memory" in parts:
    me = parts["memory"]
    lines = [f"{me['models']}; batch {me['batch']}; plain XLA; {me['machine']}, jax {me['jax']}.",
             "", "| T | LSTM peak MiB | LSTM scratch MiB | slope | Transformer peak MiB | "
             "Transformer scratch MiB | slope | Transformer / LSTM peak |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in me["rows"]:
      ls, ts = (f"{r[k]:.2f}" if k in r else "—" for k in ("lstm_slope", "transformer_slope"))
      lines.append(f"| {r['T']} | {_mib(r['lstm_peak'])} | {_mib(r['lstm_temp'])} | {ls} | "
                   f"{_mib(r['transformer_peak'])} | {_mib(r['transformer_temp'])} | {ts} | "
                   f"{r['transformer_peak'] / r['lstm_peak']:.2f}x |")
    fit = me["transformer_fit"]
    lines += ["", "Peak = arguments + outputs - donated (aliased) + scratch (temp); slope = "
              "d log(scratch) / d log(T) from the row above. Transformer scratch fitted as "
              f"a + bT + cT^2: a = {_mib(fit['a'])} MiB, b = {fit['b'] / 2**10:,.1f} KiB per "
              f"token, c = {fit['c']:,.1f} bytes per token^2; the T^2 term exceeds the linear "
              f"one from T = {fit['quadratic_from_T']}. Part wall time {me['wall_s']:.0f} s."]
    out["memory"] = "\n".join(lines) + "\n"
  if "longrange" in parts:
    lr = parts["longrange"]
    lines = [f"{lr['models']}; {lr['optimizer']}; {lr['steps']} steps each, a fresh batch per "
             f"step; test MSE on held-out sequences (predicting the mean: "
             f"{lr['baseline_mse']}; learned: below {lr['learned_below']}); {lr['machine']}.",
             "", "| T | LSTM test MSE | LSTM best | Transformer test MSE | Transformer best | "
             "LSTM params | Transformer params | LSTM s | Transformer s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in lr["rows"]:
      lines.append(f"| {r['T']} | {r['lstm_test_mse']:.4f} | {r['lstm_best_mse']:.4f} | "
                   f"{r['transformer_test_mse']:.4f} | {r['transformer_best_mse']:.4f} | "
                   f"{r['lstm_params']:,} | {r['transformer_params']:,} | "
                   f"{r['lstm_wall_s']:.0f} | {r['transformer_wall_s']:.0f} |")
    lines += ["", f"Best = lowest of the {len(lr['rows'][0]['lstm_curve'])} evaluations. Part "
              f"wall time {lr['wall_s']:.0f} s."]
    out["longrange"] = "\n".join(lines) + "\n"
  if "latency" in parts:
    la = parts["latency"]
    lines = [f"Batch 1, `apply(train=False)` jitted, accel `{la['accel']}`; {la['machine']}, "
             f"jax {la['jax']}.", "",
             "| model | data | parameters | MFLOPs / image | median ms | p10-p90 ms | calls | "
             "test accuracy | accuracy from |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in la["rows"]:
      lines.append(f"| {r['model']} | {r['dataset']} | {r['params']:,} | {r['mflops']:,.2f} | "
                   f"{r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | {r['calls']} | "
                   f"{r['accuracy']:.2f}% | {r['accuracy_source']} |")
    lines += ["", f"Part wall time {la['wall_s']:.0f} s."]
    out["latency"] = "\n".join(lines) + "\n"
  return out


def write_readme(folder: str) -> list[str]:
  """Rewrites the `<!-- course_claims:PART:begin/end -->` blocks of `folder`/README.md from
  `folder`/results.json; returns the names of the blocks that changed."""
  import re  # pylint: disable=g-import-not-at-top
  path = os.path.join(folder, "README.md")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  generated, changed = tables(load_results(folder)), []

  def replace(m):
    name = m.group(1)
    if name in generated and m.group(2) != generated[name]:
      changed.append(name)
      return (f"<!-- course_claims:{name}:begin -->\n{generated[name]}"
              f"<!-- course_claims:{name}:end -->")
    return m.group(0)

  new = re.sub(r"<!-- course_claims:(\w+):begin -->\n(.*?)<!-- course_claims:\1:end -->",
               replace, text, flags=re.DOTALL)
  if new != text:
    with open(path, "w", encoding="utf-8") as f:
      f.write(new)
  return changed


# ----------------------------------------------------------------------------- plots


def _against_t(ax, rows: list[dict], key: str, scale: float = 1.0) -> list[int]:
  """Both models' `key` ("{}_peak", ...) against T on log-log axes; returns the T values."""
  t = [r["T"] for r in rows]
  for name, label in (("lstm", "LSTM seq2seq"), ("transformer", "Transformer")):
    ax.plot(t, [r[key.format(name)] / scale for r in rows], "o-", label=label)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("sequence length T")
  return t


def _plot_speed(plt, section: dict):
  rows = section["rows"]
  fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
  _against_t(ax, rows, "{}_tokens_per_s")
  ax.set(ylabel="training tokens / s", title="Training speed (CPU)")
  ax.legend()
  ratio_ax.plot([r["T"] for r in rows], [r["ratio"] for r in rows], "o-", color="tab:green",
                label="measured (CPU)")
  ratio_ax.axhline(100, color="tab:red", ls="--", lw=1, label="the course: ~100x")
  ratio_ax.axhline(1, color="gray", ls=":", lw=1, label="equal speed")
  ratio_ax.set_xscale("log", base=2)
  ratio_ax.set(yscale="log", xlabel="sequence length T", ylabel="Transformer / LSTM tokens per s",
               title="Speed ratio")
  ratio_ax.legend()
  return fig


def _plot_memory(plt, section: dict):
  rows = section["rows"]
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  t = _against_t(ax, rows, "{}_peak", 2**20)
  for name, power, style in (("lstm", 1, "k--"), ("transformer", 2, "k:")):
    y1 = rows[-1][f"{name}_peak"] / 2**20  # Reference slopes through the last points.
    ax.plot(t, [y1 * (x / t[-1]) ** power for x in t], style, lw=1,
            label=f"∝ T{'²' if power == 2 else ''}")
  ax.set_ylim(bottom=min(r["lstm_peak"] for r in rows) / 2**20 / 2)
  ax.set(ylabel="peak memory of a training step (MiB)", title=f"Memory, batch {section['batch']}")
  ax.legend()
  return fig


def _plot_longrange(plt, section: dict):
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
  for ax, (name, label) in zip(axes, (("lstm", "LSTM"), ("transformer", "Transformer"))):
    for r in section["rows"]:
      steps, mse = zip(*r[f"{name}_curve"])
      ax.plot(steps, mse, "o-", label=f"T = {r['T']}")
    ax.axhline(section["baseline_mse"], color="gray", ls="--", lw=1, label="predict the mean")
    ax.axhline(section["learned_below"], color="gray", ls=":", lw=1, label="learned (0.01)")
    ax.set(yscale="log", xlabel="training step", title=f"Adding problem, {label}")
  axes[0].set_ylabel("test MSE")
  axes[1].legend()
  return fig


def _plot_latency(plt, section: dict):
  rows = section["rows"]
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  ax.bar([r["model"].split(" (")[0] for r in rows], [r["median_ms"] for r in rows],
         color="tab:blue")
  for i, r in enumerate(rows):
    ax.annotate(f"{r['params'] / 1e3:,.0f}k params\n{r['mflops']:,.0f} MFLOPs\n"
                f"{r['accuracy']:.1f}% ({r['dataset']})", (i, r["median_ms"]), ha="center",
                va="bottom", fontsize=8, xytext=(0, 4), textcoords="offset points")
  ax.set(ylabel="batch-1 latency, median (ms)", title="Inference latency (CPU)",
         ylim=(0, max(r["median_ms"] for r in rows) * 1.5))
  return fig


def plot(folder: str, part: str, section: dict) -> str:
  """Draws `part`'s figure into `folder`/PART.png; returns its path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  draw = {"speed": _plot_speed, "memory": _plot_memory, "longrange": _plot_longrange,
          "latency": _plot_latency}[part]
  fig = draw(plt, section)
  fig.tight_layout()
  path = os.path.join(folder, f"{part}.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  out = FLAGS.out
  if FLAGS.readme:
    results = load_results(out)
    if not results:
      raise app.UsageError(f"--readme: no results.json in {out}")
    experiment_runs.write_results(out, assemble(results["parts"]))
    print(f"rewrote: {', '.join(write_readme(out)) or 'nothing (in step)'}")
    return
  os.makedirs(out, exist_ok=True)
  sizes = QUICK if FLAGS.quick else FULL
  run = {"speed": part_speed, "memory": part_memory, "longrange": part_longrange,
         "latency": part_latency}
  for part in PARTS if FLAGS.part == "all" else (FLAGS.part,):
    start = time.perf_counter()
    section = run[part](sizes)
    section["wall_s"] = round(time.perf_counter() - start, 1)
    write(out, part, section, FLAGS.quick, FLAGS.loaded)
    plot(out, part, section)
    print(f"{part}: {section['wall_s']:.0f} s, written to {out}", flush=True)
  if os.path.isfile(os.path.join(out, "README.md")):
    write_readme(out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
