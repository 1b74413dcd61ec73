"""A small ViT against ResNet-20 on CIFAR-10 from scratch, on all or part of the training set:
the course's "ViTs need more data than CNNs" (experiments/vit_vs_cnn/).

ARG is MODEL,PERCENT,STEPS: MODEL `resnet20` (configs/cifar_resnet.py's recipe) or `vit`
(patch 4 on 32x32, width 128, depth 6, 4 heads, MLP 256, class token; AdamW 1e-3, weight
decay 0.05, 5% linear warm-up then cosine decay, gradient clipping at 1, the same crops and
flips); PERCENT of the 5,000 training images per class (a seeded choice, the same for both
models: dataset.subset_seed); STEPS of batch 128. The experiment gives each model the same
wall-clock budget, so STEPS differ between the models.

  python -m cnnrnn.main --config=configs/cifar_vit_vs_cnn.py:vit,10,1000 --workdir=wd/vit_10 \\
      --config.dataset.name=cifar10_folder \\
      --config.dataset.manual_dir=../shared/datasets/cifar10_jpeg_lossy
"""

from cnnrnn.train import default_config
from configs import cifar_resnet

MODELS = ("resnet20", "vit")
IMAGES_PER_CLASS = 5000


def get_config(arg: str = "vit,100,1000"):
  fields = arg.split(",")
  model, percent, steps = fields if len(fields) == 3 else ("", "", "")
  if (model not in MODELS or not percent.isdigit() or not 0 < int(percent) <= 100
      or not steps.isdigit() or not int(steps) > 0):
    raise ValueError(f"configs/cifar_vit_vs_cnn.py:{arg}; allowed: MODEL,PERCENT,STEPS with "
                     f"MODEL in {', '.join(MODELS)}, PERCENT in 1..100 and STEPS > 0")
  steps = int(steps)
  if model == "resnet20":
    c = cifar_resnet.get_config(f"20,{steps}")
  else:
    c = default_config()
    c.model.name = "vit"
    c.model.patch_size = 4
    c.model.image_size = 32
    c.model.hidden_dim = 128
    c.model.depth = 6
    c.model.num_heads = 4
    c.model.mlp_dim = 256
    c.model.num_classes = 10
    c.dataset.name = "cifar10"
    c.dataset.augment = "crop_flip"
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.num_train_steps = steps
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.05
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = max(steps // 20, 1)
    c.optimizer.clip_norm = 1.0
    c.log_every_steps = 100
  per_class = IMAGES_PER_CLASS * int(percent) // 100
  c.dataset.examples_per_class = 0 if per_class == IMAGES_PER_CLASS else per_class
  c.eval_every_steps = max(steps // 5, 1)
  c.checkpoint_every_steps = c.eval_every_steps
  return c
