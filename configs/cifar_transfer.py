"""Transfer on CIFAR-10 (the course's "fine-tuning needs 10-100x less data"), as configs:
pretrain a CIFAR ResNet-20 on classes 0-4, then learn classes 5-9 from N labels per class,
from scratch or from the pretrained network. experiments/transfer/ ran it with shortened
schedules (STEPS below) and one or two seeds per cell; the full sizes have not been run.

ARG is one of
  pretrain[,STEPS]         ResNet-20 on classes 0-4, all 5,000 images per class
                           (the cifar_resnet schedule shrunk to 20k steps, or STEPS);
  STRATEGY,N[,STEPS]       classes 5-9 (relabelled 0-4) with N training images per class
                           (0: all 5,000), STRATEGY one of
                             scratch       random initialisation, lr 0.1;
                             linear_probe  pretrained backbone frozen, new head, lr 0.1;
                             full          all layers, backbone at 0.1x the head's lr 0.01;
                             discriminative  per-stage rates, x(1/2.6) per stage down;
                             progressive   head first, then stage3, stage2, stage1, stem
                                           unfreeze at 20/40/60/80% of the run.

  python -m cnnrnn.main --config=configs/cifar_transfer.py:pretrain --workdir=wd/pretrain \\
      --config.dataset.manual_dir=DIR_WITH_cifar-10-binary.tar.gz
  python -m cnnrnn.main --config=configs/cifar_transfer.py:full,100 --workdir=wd/full_100_s0 \\
      --config.transfer.source=wd/pretrain --config.dataset.subset_seed=0 --config.seed=0 \\
      --config.dataset.manual_dir=DIR_WITH_cifar-10-binary.tar.gz

Fine-tuning runs take the pretrained workdir as --config.transfer.source (required for all
strategies but scratch). Runs with N < 5,000 train for a fixed number of steps (3,000),
so small N means many epochs; the test split is all 1,000 test images of each class.
A STEPS argument shrinks a run and everything timed by it (learning-rate decays, unfreezing
steps) with it; overriding --config.num_train_steps would leave those where they were.
"""

from cnnrnn import transfer
from configs import cifar_resnet

STRATEGIES = ("scratch", *transfer.STRATEGIES)
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
PRETRAIN_STEPS = 20_000
FINETUNE_STEPS = 3_000


def get_config(arg: str = "pretrain"):
  fields = arg.split(",")
  if fields[0] == "pretrain" and len(fields) <= 2:
    steps = fields[1] if len(fields) == 2 else str(PRETRAIN_STEPS)
    c = cifar_resnet.get_config(f"20,{steps}")
    c.model.num_classes = len(PRETRAIN_CLASSES)
    c.dataset.classes = PRETRAIN_CLASSES
    return c
  strategy, n, steps = (fields + [""])[:3] if len(fields) in (2, 3) else ("", "", "")
  if (strategy not in STRATEGIES or not n.isdigit()
      or (steps and not (steps.isdigit() and int(steps) > 0))):
    raise ValueError(f"configs/cifar_transfer.py:{arg}; allowed: pretrain[,STEPS], or "
                     f"STRATEGY,N[,STEPS] with STRATEGY in {', '.join(STRATEGIES)}, N labels "
                     f"per class (0: all) and STEPS > 0")
  n = int(n)
  c = cifar_resnet.get_config(f"20,{steps or (FINETUNE_STEPS if n else 10_000)}")
  c.model.num_classes = len(TARGET_CLASSES)
  c.dataset.classes = TARGET_CLASSES
  c.dataset.examples_per_class = n
  # Ten labels per class are 50 images: one batch of all of them.
  c.batch_size = min(c.batch_size, 5 * n) if n else c.batch_size
  if strategy == "scratch":
    return c
  c.transfer.source = "<set --config.transfer.source to the pretrain workdir>"  # fails clearly
  c.transfer.strategy = strategy
  c.optimizer.learning_rate = 0.1 if strategy == "linear_probe" else 0.01
  c.transfer.backbone_lr_scale = 0.1
  c.transfer.unfreeze_steps = tuple(c.num_train_steps * k // 5 for k in range(1, 5))
  return c
