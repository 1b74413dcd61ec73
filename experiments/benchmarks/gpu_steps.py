"""The GPU table of run_all.py (`--device=gpu`): training steps in mixed precision.

  resnet50     ResNet-50 at 224x224, B=128, bfloat16 compute (`model.dtype`), float32
               parameters, SGD momentum: images/s and MFU; vs torchvision's resnet50 under
               torch.autocast(bfloat16), channels-last.
  transformer  the Multi30k Transformer (3+3 layers, D 256, 8 heads, FFN 512, vocabulary
               8000, B=128 pairs of 30+30 tokens, Adam), bfloat16 compute: target tokens/s;
               vs bench_transformer's torch model under autocast.
  lstm_lm      the LSTM LM 2x650 (B=20, T=35, vocabulary 10,000), float32, SGD: vs PyTorch's
               nn.LSTM (cuDNN).
  vit_b16      ViT-B/16 at 224, B=64, bfloat16 compute, AdamW: vs timm's
               vit_base_patch16_224 under autocast; cnnrnn twice: its default attention and
               `MultiHeadAttention(implementation="cudnn")` (cuDNN's fused attention through
               `jax.nn.dot_product_attention`).

cnnrnn's steps are the trainer's (`cnnrnn.train.steps.make_train_step`) under
`accel="auto"`, which resolves to plain XLA on a GPU. MFU = FLOPs per step (XLA's cost
analysis of the step; the LSTM's by hand) / time / the GPU's dense bfloat16 peak from
`PEAK_TFLOPS` (the LSTM runs float32: no MFU). Not measured yet: see the benchmarks README.
"""

import statistics
import sys

# Dense bfloat16 tensor-core peak, TFLOP/s, by a substring of `jax.devices()[0].device_kind`
# (first match wins; vendor data sheets, without sparsity).
PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0),
    ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
)

QUICK = dict(image=32, batch=2)


def peak_tflops(device_kind: str) -> float | None:
  """The dense bfloat16 peak of the GPU named `device_kind`, or None if not in the table."""
  return next((peak for name, peak in PEAK_TFLOPS if name in device_kind), None)


def _torch_device():
  import torch  # pylint: disable=g-import-not-at-top
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync():
  import torch  # pylint: disable=g-import-not-at-top
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def _jax_classifier(model, images, labels, tx, mode="auto"):
  """The trainer's step for `model` (1000 classes) on (images, labels), a `harness.JaxStep`."""
  import harness  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from cnnrnn import tasks  # pylint: disable=g-import-not-at-top
  from cnnrnn.train import steps  # pylint: disable=g-import-not-at-top
  from cnnrnn.train.state import TrainState  # pylint: disable=g-import-not-at-top
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
  params = variables.pop("params")
  state = TrainState(step=jax.numpy.zeros((), "int32"), params=params,
                     model_state=dict(variables), opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(1))
  task = tasks.create("classification", num_classes=1000)
  batch = {"image": images, "label": labels}
  return harness.JaxStep(steps.make_train_step(model, task, tx), state, batch, mode=mode)


def _torch_classifier(model, images, labels, opt, channels_last=False):
  """One autocast(bfloat16) training step of a torch classifier, synchronised."""
  import torch  # pylint: disable=g-import-not-at-top
  dev = _torch_device()
  model = model.to(dev).train()
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(dev)
  if channels_last:
    model, x = model.to(memory_format=torch.channels_last), x.to(
        memory_format=torch.channels_last)
  y = torch.from_numpy(labels.astype("int64")).to(dev)
  optimizer = opt(model.parameters())

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
      loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    _sync()

  return step


def _resnet50(quick):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  from cnnrnn import models  # pylint: disable=g-import-not-at-top
  size, batch = (QUICK["image"], QUICK["batch"]) if quick else (224, 128)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch, size, size, 3), np.float32)
  labels = rng.integers(0, 1000, batch).astype(np.int32)
  ours = _jax_classifier(models.create("resnet50", num_classes=1000, dtype=jnp.bfloat16),
                         jnp.asarray(images), jnp.asarray(labels), optax.sgd(0.1, momentum=0.9))
  theirs = _torch_classifier(torchvision.models.resnet50(), images, labels,
                             lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                             channels_last=True)
  return {"pytorch": theirs, "cnnrnn": ours}, ours.flops, batch, "images"


def _vit_b16(quick):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from cnnrnn import models  # pylint: disable=g-import-not-at-top
  size, batch = (QUICK["image"], QUICK["batch"]) if quick else (224, 64)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch, size, size, 3), np.float32)
  labels = rng.integers(0, 1000, batch).astype(np.int32)
  kw = dict(num_classes=1000, dtype=jnp.bfloat16, image_size=size)
  tx = optax.adamw(1e-3, weight_decay=0.05)
  ours = _jax_classifier(models.create("vit_b16", **kw), jnp.asarray(images),
                         jnp.asarray(labels), tx)
  cudnn = _jax_classifier(models.create("vit_b16", **kw), jnp.asarray(images),
                          jnp.asarray(labels), tx)
  cudnn.fn = _with_attention(cudnn, "cudnn")
  theirs = _torch_classifier(timm.create_model("vit_base_patch16_224", img_size=size),
                             images, labels,
                             lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05))
  return ({"pytorch": theirs, "cnnrnn": ours, "cnnrnn, cuDNN attention": cudnn}, ours.flops,
          batch, "images")


def _with_attention(step, implementation: str):
  """`step`'s function retraced with every `cnnrnn.nn.MultiHeadAttention` set to
  `implementation` (a benchmark-side switch: the models do not expose the field)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from cnnrnn import accel  # pylint: disable=g-import-not-at-top
  from cnnrnn import nn as cnn  # pylint: disable=g-import-not-at-top

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == "__call__" and isinstance(module, cnn.MultiHeadAttention)
        and module.implementation is None):
      return module.clone(parent=module.scope, implementation=implementation)(*args, **kwargs)
    return next_fun(*args, **kwargs)

  def traced(*args):
    with nn.intercept_methods(intercept):
      return step._step(*args)  # pylint: disable=protected-access

  return jax.jit(accel.accelerate(traced, "auto"), donate_argnums=0)


def _transformer(quick):
  import bench_transformer  # pylint: disable=g-import-not-at-top
  import harness  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from cnnrnn import models  # pylint: disable=g-import-not-at-top
  cfg = bench_transformer.TINY if quick else bench_transformer.FULL
  src, tgt = bench_transformer._data(cfg, np.random.default_rng(0), cfg["batch"])  # pylint: disable=protected-access
  model = models.create("transformer", vocab_size=cfg["vocab"], num_layers=cfg["layers"],
                        d_model=cfg["d"], num_heads=cfg["heads"], mlp_dim=cfg["ff"],
                        dropout_rate=0.1, final_norm=True, max_len=256, dtype=jnp.bfloat16)
  ours = harness.translation_train_step(model, optax.adam(5e-4), src, tgt, jax.random.key(0),
                                        bench_transformer.PAD)
  dev = _torch_device()
  tmodel = bench_transformer.TorchTranslator(cfg, 0.1).to(dev).train()
  opt = torch.optim.Adam(tmodel.parameters(), lr=5e-4)
  src_t, tgt_t = (torch.from_numpy(a).long().to(dev) for a in (src, tgt))

  def theirs():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
      logits = tmodel(src_t, tgt_t[:, :-1])
      loss = torch.nn.functional.cross_entropy(
          logits.reshape(-1, cfg["vocab"]).float(), tgt_t[:, 1:].reshape(-1),
          ignore_index=bench_transformer.PAD)
    loss.backward()
    opt.step()
    _sync()

  tokens = int((tgt[:, 1:] != bench_transformer.PAD).sum())
  return {"pytorch": theirs, "cnnrnn": ours}, ours.flops, tokens, "target tokens"


def _lstm_lm(quick):
  import bench_rnn  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  cfg = bench_rnn.CONFIGS["lstm_lm"]
  if quick:
    cfg = dict(cfg, hidden=16, seq=4, batch=2, vocab=50)
  ours = bench_rnn.make_competitors(cfg, names=("ours",))["ours"]
  dev = _torch_device()
  torch.manual_seed(0)
  tmodel = bench_rnn.TorchLM(cfg["vocab"], cfg["hidden"], cfg["layers"], "lstm").to(dev)
  opt = torch.optim.SGD(tmodel.parameters(), lr=0.1)
  rng = np.random.default_rng(1)
  tok, tgt = (torch.from_numpy(rng.integers(0, cfg["vocab"], (cfg["batch"], cfg["seq"])))
              .to(dev) for _ in range(2))

  def theirs():  # nn.LSTM on CUDA tensors runs cuDNN's LSTM.
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(tmodel(tok).reshape(-1, cfg["vocab"]),
                                             tgt.reshape(-1))
    loss.backward()
    opt.step()
    _sync()

  return ({"pytorch": theirs, "cnnrnn": ours}, lambda: bench_rnn.step_flops(cfg),
          cfg["batch"] * cfg["seq"], "tokens")


# key -> (row title, builder, MFU against the bfloat16 peak).
GPU_STEPS = {
    "resnet50": ("ResNet-50 at 224, B=128, bfloat16", _resnet50, True),
    "transformer": ("Multi30k Transformer 3+3, d 256, B=128, bfloat16", _transformer, True),
    "lstm_lm": ("LSTM LM 2x650, B=20, T=35, float32 (vs cuDNN)", _lstm_lm, False),
    "vit_b16": ("ViT-B/16 at 224, B=64, bfloat16 (vs timm)", _vit_b16, True),
}


def run(quick: bool, rounds: int | None = None, steps: int | None = None) -> dict:
  """Times every step of `GPU_STEPS` here (a worker of run_all.py); a JSON-able report."""
  import harness  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  kind = jax.devices()[0].device_kind
  peak = peak_tflops(kind)
  out = {"device_kind": kind, "jax_backend": jax.default_backend(), "peak_tflops_bf16": peak,
         "torch_device": str(_torch_device()), "jax": jax.__version__,
         "torch": torch.__version__, "steps": []}
  for key, (title, build, bf16) in GPU_STEPS.items():
    print(f"run_all: {key} ...", file=sys.stderr, flush=True)
    competitors, flops_fn, items, unit = build(quick)
    times = harness.interleave(competitors, rounds=rounds or (1 if quick else 5),
                               steps=steps or (1 if quick else 10), warmup=1 if quick else 3)
    flops = float(flops_fn())
    row = {"key": key, "title": title, "flops": flops, "unit": unit, "items": items,
           "competitors": {}}
    for name, t in times.items():
      med = statistics.median(t)
      row["competitors"][name] = {
          "ms": 1e3 * med, "per_s": items / med,
          "mfu": flops / med / (peak * 1e12) if (peak and bf16) else None}
    row["ratio"] = statistics.median(times["pytorch"]) / statistics.median(times["cnnrnn"])
    out["steps"].append(row)
  return out


def markdown(report: dict) -> str:
  g = report["gpu"]
  lines = [f"## GPU training steps, {report['date']}", "",
           f"machine: {g['device_kind']} (JAX backend {g['jax_backend']}, dense bfloat16 peak "
           f"{g['peak_tflops_bf16'] or 'unknown'} TFLOP/s), jax {g['jax']}, torch {g['torch']} "
           f"on {g['torch_device']}", "", f"command: `{report['command']}`", "",
           "| step | competitor | ms/step | items/s | MFU | speed vs PyTorch |",
           "|---|---|---:|---:|---:|---:|"]
  for r in g["steps"]:
    base = r["competitors"]["pytorch"]["ms"]
    for name, c in r["competitors"].items():
      mfu = "—" if c["mfu"] is None else f"{100 * c['mfu']:.0f}%"
      lines.append(f"| {r['title']} | {name} | {c['ms']:.1f} | {c['per_s']:.0f} {r['unit']}"
                   f" | {mfu} | {base / c['ms']:.2f}x |")
  return "\n".join(lines) + "\n"


def main(args, env, out, date, command, run_worker) -> int:
  """run_all.py --device=gpu: one worker runs the table; writes results.md/.json to `out`."""
  import json  # pylint: disable=g-import-not-at-top
  got, log = run_worker(args, env, "gpu")
  if got is None:
    print(f"run_all: {log}", file=sys.stderr)
    return 1
  report = {"date": f"{date:%Y-%m-%d %H:%M} UTC", "command": command, "quick": args.quick,
            "device": "gpu", "gpu": got}
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(report, indent=1))
  (out / "results.md").write_text(markdown(report))
  print(markdown(report))
  print(f"written: {out / 'results.md'}, {out / 'results.json'}")
  return 0
