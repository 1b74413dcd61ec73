"""Transfer learning: start from pretrained weights, replace the head, freeze and unfreeze.

The trainer uses this package when `config.transfer.source` is set (the fields, in
`default_config()`):

    transfer.source       a cnnrnn workdir (its newest Orbax checkpoint: params and
                          batch_stats only), a torch state dict file (`.pth`/`.pt`/`.bin`,
                          read with `torch.load(weights_only=True)`, or `.safetensors`), or
                          published weights by name: "timm:vit_base_patch16_224.augreg_in21k",
                          "torchvision:ResNet50_Weights.IMAGENET1K_V2" (downloaded once into
                          the torch hub cache; offline, the error names the file to put where).
    transfer.source_model the cnnrnn registry name whose torch layout the state dict has
                          (default: model.name; e.g. "vit_b16" for a timm ViT-B/16).
    transfer.target_module  load the source into this top-level module of the model instead
                          of the whole model (e.g. "encoder": an image model's workdir into
                          `video_classifier`'s frame encoder), the source's head dropped;
                          the rest of the model keeps its fresh initialisation.
    transfer.head         the top-level module that is the head (default "head"), fresh
                          (as the model initialises it) unless `keep_head`.
    transfer.keep_head    keep the source's head when its shapes fit (the same classes,
                          e.g. fine-tuning at a higher resolution); default False.
    transfer.strategy     "full" | "linear_probe" | "discriminative" | "progressive".
    transfer.backbone_lr_scale  "full": the backbone's learning rate is this times the head's.
    transfer.stage_lr_decay     "discriminative": the stage k places below the head learns at
                          stage_lr_decay ** k times the head's rate (ULMFiT: 1 / 2.6).
    transfer.unfreeze_steps     "progressive": the head trains alone until the first step here;
                          at each step listed, the next stage down unfreezes.

Stages are the model's top-level modules in creation order (input to output) grouped by
`STAGE_RULES` (ResNet: stem, stage1, stage2, ...; ViT: embedding, block0, block1, ...,
norm; conv_stack: conv0 (+bn0), conv1, ..., fc0), then the head.

How freezing works:
- Frozen parameters are labelled "frozen" in an `optax.multi_transform` whose transform for
  them is `optax.set_to_zero()`: they hold no optimizer state and never move.
- A linear probe runs the whole model in inference mode (`train=False`: BatchNorm normalises
  with its running statistics and does not update them; dropout is off, also in front of
  the head) and puts `jax.lax.stop_gradient` on every backbone parameter, so reverse mode
  computes no backbone gradient at all, only the head's (the test checks the jaxpr).
- Progressive unfreezing keeps one jitted step for the whole run: every stage has its
  optimizer state from the start, and until its step a stage's gradient (weight decay
  included) is zeroed before momentum or Adam's moments see it and its update is zeroed
  after; the learning-rate schedule stays global. (Adam's step count runs on meanwhile, so
  its bias correction is spent when the stage unfreezes: its first updates are smaller.)
  Gradients of frozen stages are still computed. Their BatchNorm layers run in training
  mode throughout (as fast.ai's `freeze` with `train_bn`).
- Learning-rate multipliers scale each group's update after the optimizer, which equals
  scaling its learning rate for SGD, momentum, Adam and AdamW alike; gradient clipping stays
  global (over all groups).

The package never imports the trainer: the trainer hands it its optimizer factory
(`plan(..., optimizer_factory=...)`) and, optionally, its run loader for workdir sources.
Its modules, by job: `config` (the `transfer` block), `groups` (stage grouping and group
labels), `strategies` (the freeze / unfreeze optimizer, the linear probe), `sources`
(loading from a workdir, a hub or a state dict), `heads` (fitting pretrained weights to the
new model: head replacement, resampling), `plans` (what the trainer calls).
"""

from cnnrnn.transfer.config import STRATEGIES, default_config, validate
from cnnrnn.transfer.groups import (STAGE_RULES, call_order, check_head, group_labels, stage_name,
                                   stages, unfreeze_step)
from cnnrnn.transfer.heads import adapt, adapt_into, resample_rules
from cnnrnn.transfer.plans import Plan, plan
from cnnrnn.transfer.sources import HUBS, STATE_DICT_SUFFIXES, load_source
from cnnrnn.transfer.strategies import LinearProbe, make_optimizer, wrap_model
