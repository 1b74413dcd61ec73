"""Fine-tune an ImageNet-21k ViT on CIFAR-10 (Dosovitskiy et al. 2021, appendix B.1.1; the
big_vision transfer recipe), at 224x224. NOT RUN HERE: it needs a GPU/TPU (10k steps of
ViT-B/16 at batch 512 are ~3e17 FLOPs; weeks on 2 CPU cores).

Paper settings for CIFAR-10: SGD with momentum 0.9, no weight decay, batch 512, gradient
clipping at global norm 1, cosine decay after a 500-step linear warm-up, 10k steps, the
learning rate picked from {0.001, 0.003, 0.01, 0.03} on a held-out split (0.03 here, 0.01
also works); random crops and flips for training, plain resize for evaluation; the head
replaced by a fresh (zero) one. The paper reports about 98-99% test accuracy for the
ImageNet-21k ViT-B/16 and L/16 (fine-tuned at 384x384, where this config uses 224x224:
`--config.model.image_size=384 --config.dataset.image_size=384` for the paper's resolution;
the position embeddings are then resampled at load time).

  python -m cnnrnn.main --config=configs/vit_cifar10_finetune.py:B/16 \\
      --workdir=workdirs/vit_b16_cifar10 \\
      --config.dataset.manual_dir=DIR_WITH_cifar-10-binary.tar.gz

ARG is VARIANT[,STEPS] with VARIANT one of Ti/16, S/16, B/16, B/32, L/16 (default B/16).
The weights come from timm's hub ("timm:vit_base_patch16_224.augreg_in21k", ImageNet-21k,
21,843 classes; downloaded once, cached): offline, download the file the error names and
set --config.transfer.source=PATH/model.safetensors. Inputs are normalised with ImageNet's
per-channel statistics (the dataset's), while the augreg weights were trained with mean =
std = 0.5: an affine change of the input that fine-tuning absorbs (cnnrnn has no per-config
normalisation override yet).
"""

from cnnrnn.train import default_config

# cnnrnn model name and timm's ImageNet-21k weights, per variant.
VARIANTS = {
    "Ti/16": ("vit_ti16", "timm:vit_tiny_patch16_224.augreg_in21k"),
    "S/16": ("vit_s16", "timm:vit_small_patch16_224.augreg_in21k"),
    "B/16": ("vit_b16", "timm:vit_base_patch16_224.augreg_in21k"),
    "B/32": ("vit_b32", "timm:vit_base_patch32_224.augreg_in21k"),
    "L/16": ("vit_l16", "timm:vit_large_patch16_224.augreg_in21k"),
}


def get_config(arg: str = "B/16"):
  variant, _, steps = arg.partition(",")
  if variant not in VARIANTS:
    raise ValueError(f"configs/vit_cifar10_finetune.py:{arg}; allowed variants: "
                     f"{', '.join(VARIANTS)}")
  if steps and not (steps.isdigit() and int(steps) > 0):
    raise ValueError(f"configs/vit_cifar10_finetune.py:{arg}; steps must be a positive integer")
  name, weights = VARIANTS[variant]
  c = default_config()
  c.model.name = name
  c.model.num_classes = 10
  c.model.image_size = 224
  c.dataset.name = "cifar10"
  c.dataset.augment = "random_resized_crop"  # inception crop + flip, as big_vision
  c.dataset.image_size = 224
  c.dataset.crop_fraction = 1.0  # evaluation: the whole image resized to 224
  c.transfer.source = weights
  c.transfer.source_model = name
  c.transfer.strategy = "full"
  c.batch_size = 512
  c.eval_batch_size = 512
  c.num_train_steps = int(steps) if steps else 10_000
  c.optimizer.name = "momentum"
  c.optimizer.momentum = 0.9
  c.optimizer.learning_rate = 0.03
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = min(500, c.num_train_steps // 10)
  c.optimizer.clip_norm = 1.0
  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  return c
