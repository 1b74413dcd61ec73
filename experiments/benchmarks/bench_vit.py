"""Vision Transformer training step: cnnrnn's `ViT` vs timm's in PyTorch eager, CPU.

One step = forward + backward + AdamW update, float32, no dropout, softmax cross-entropy,
the same weights on both sides (converted with `cnnrnn.interop.torch.to_torch`; the logits
are compared before timing). Shapes:

  ti16_224  ViT-Ti/16 (`vit_ti16`, timm `vit_tiny_patch16_224`) at 224x224, 1000 classes.
  p4_32     the patch-4 ViT of experiments/vit_vs_cnn/ (D 128, depth 6, 4 heads, MLP 256)
            on 32x32 images, 10 classes (timm `VisionTransformer(img_size=32, patch_size=4)`).

ours: the model's step jitted with donated state, as the trainer compiles it: under
`accel="auto"`, which on one CPU device traces the dense layers' and the attention's
products as `cnnrnn.accel`'s matrix-product primitive (weight gradients and the attention's
dK, dV on the native kernel) and the patch embedding's convolution on the native kernels;
its attention is cnnrnn's head-major one (cnnrnn/nn/attention.py). `--xla` adds
`ours-xla`, the same step traced with `accel="xla"` (plain XLA, what a Flax user's own
`jax.jit` of the model computes). torch: timm's model, `torch.optim.AdamW`, eager.
Interleaved A B A B (experiments/benchmarks/harness.py), medians; "speed vs torch" is the
torch median over ours (above 1: faster than PyTorch). Not a test.

    python experiments/benchmarks/bench_vit.py [--rounds=6] [--configs=ti16_224,p4_32] [--xla]
    python experiments/benchmarks/bench_vit.py --tiny     # a smoke run, not a timing
"""

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
import timm  # noqa: E402
import torch  # noqa: E402

from cnnrnn import models  # noqa: E402
from cnnrnn.interop import torch as interop  # noqa: E402

LR, WEIGHT_DECAY = 1e-3, 0.05
CONFIGS = {
    "ti16_224": dict(kwargs=dict(patch_size=16, hidden_dim=192, depth=12, num_heads=3,
                                 mlp_dim=768, image_size=224, num_classes=1000), batch=16),
    "p4_32": dict(kwargs=dict(patch_size=4, hidden_dim=128, depth=6, num_heads=4, mlp_dim=256,
                              image_size=32, num_classes=10), batch=128),
}
TINY = dict(kwargs=dict(patch_size=4, hidden_dim=32, depth=2, num_heads=2, mlp_dim=64,
                        image_size=16, num_classes=10), batch=4)


def _timm_model(kw):
  return timm.models.vision_transformer.VisionTransformer(
      img_size=kw["image_size"], patch_size=kw["patch_size"], embed_dim=kw["hidden_dim"],
      depth=kw["depth"], num_heads=kw["num_heads"], mlp_ratio=kw["mlp_dim"] / kw["hidden_dim"],
      num_classes=kw["num_classes"])


def make_competitors(cfg, seed=0, modes=("auto",)):
  """name -> one blocking training step ("ours" for accel mode "auto", "ours-xla" for
  "xla", both `harness.JaxStep`s; "torch"); checks that both sides compute the same logits."""
  kw, batch = cfg["kwargs"], cfg["batch"]
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, kw["image_size"], kw["image_size"], 3), np.float32)
  labels = rng.integers(0, kw["num_classes"], batch).astype(np.int32)
  model = models.create("vit", **kw)
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.asarray(images[:1]))
  # A random head (the model's is zero-initialised, as timm's), so the logits check compares
  # something.
  head = variables["params"]["head"]
  variables = {"params": {**variables["params"], "head": {
      "kernel": 0.02 * jax.random.normal(jax.random.key(seed + 1), head["kernel"].shape),
      "bias": head["bias"]}}}
  tmodel = _timm_model(kw)
  state_dict = interop.to_torch("vit", variables)
  tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
  x_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    want = tmodel.eval()(x_t).numpy()
  got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(images)))
  print(f"logits check: max |ours - timm| = {np.max(np.abs(got - want)):.2e}")
  tmodel.train()

  tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], x, y)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  x_j, y_j = jnp.asarray(images), jnp.asarray(labels)

  def ours(mode):
    params = jax.tree.map(jnp.copy, variables["params"])  # Each step donates its own.
    return harness.JaxStep(step, {"params": params, "opt": tx.init(params)}, x_j, y_j,
                           mode=mode)

  opt = torch.optim.AdamW(tmodel.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  y_t = torch.from_numpy(labels).long()

  def torch_step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(tmodel(x_t), y_t)
    loss.backward()
    opt.step()

  names = {"auto": "ours", "xla": "ours-xla"}
  return {**{names[m]: ours(m) for m in modes}, "torch": torch_step}


def main():
  parser = harness.torch_comparison_parser(__doc__)
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--xla", action="store_true",
                      help="also time the step traced with accel='xla' (plain XLA)")
  args = parser.parse_args()
  harness.setup_torch_comparison(args, f"timm {timm.__version__}, ")
  configs = {"tiny": TINY} if args.tiny else {k: CONFIGS[k] for k in args.configs.split(",")}
  for name, cfg in configs.items():
    kw = cfg["kwargs"]
    modes = ("auto", "xla") if args.xla else ("auto",)
    times = harness.interleave(make_competitors(cfg, modes=modes), rounds=args.rounds,
                               steps=args.steps,
                               warmup=2)
    title = (f"{name}: patch {kw['patch_size']}, D={kw['hidden_dim']}, depth {kw['depth']}, "
             f"{kw['num_heads']} heads, {kw['image_size']}x{kw['image_size']}, "
             f"B={cfg['batch']}, AdamW")
    print(harness.table(times, "torch", title), flush=True)
    print()


if __name__ == "__main__":
  main()
