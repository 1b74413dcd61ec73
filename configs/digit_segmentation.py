"""Semantic segmentation of MNIST digit scenes (`digit_scenes`: 64x64 canvases with three
digits, 11 classes per pixel) with the `segmenter` (a CIFAR ResNet-20 backbone and an FCN
skip-upsampling decoder), from scratch or from a backbone pretrained on MNIST classification.

ARG is one of
  pretrain[,STEPS]    cifar_resnet20 classifying MNIST (28x28; the backbone's source);
  scratch[,STEPS]     the segmenter from random initialisation;
  transfer[,STEPS]    the segmenter whose backbone starts from the pretrain run
                      (--config.transfer.source=<its workdir>; cnnrnn.transfer loads it into
                      the module `backbone`, the decoder `head` starts fresh).

  python -m cnnrnn.main --config=configs/digit_segmentation.py:pretrain --workdir=wd/seg_pre \\
      --config.dataset.manual_dir=../shared/datasets/mnist
  python -m cnnrnn.main --config=configs/digit_segmentation.py:transfer --workdir=wd/seg_tr \\
      --config.transfer.source=wd/seg_pre --config.dataset.manual_dir=../shared/datasets/mnist

Paper: none; the course's claims "CNNs excel at ... segmentation" and that a pretrained
backbone helps a new task.
Ours (as committed, a reduced budget: `pretrain,200`, then `scratch,150` / `transfer,150`
with --config.dataset.size=40 --config.dataset.num_digits=2 --config.dataset.num_train=3200
--config.dataset.num_test=400 --config.batch_size=16, the commands of
experiments/digit_segmentation/run.py; 2 CPU cores, 3-6 minutes per run): the classifier
95.88 % MNIST test accuracy; test mIoU over the 11 classes, scratch 0.306, transfer 0.329
(background IoU 0.99 for both, the digits far lower); one seed
(experiments/digit_segmentation/README.md). The defaults below (64x64 scenes of three
digits, 500 steps) were not run to the end.
"""

from cnnrnn.train import default_config

MODES = ("pretrain", "scratch", "transfer")


def get_config(arg: str = "scratch"):
  mode, *rest = arg.split(",")
  if mode not in MODES or len(rest) > 1 or (rest and not rest[0].isdigit()):
    raise ValueError(f"configs/digit_segmentation.py:{arg}; allowed: MODE[,STEPS], MODE one "
                     f"of {MODES}")
  c = default_config()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.log_every_steps = 100
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 1000
  if mode == "pretrain":
    c.model.name = "cifar_resnet20"
    c.model.num_classes = 10
    c.dataset.name = "mnist"
    c.batch_size = 64
    c.eval_batch_size = 500
    c.num_train_steps = int(rest[0]) if rest else 1000
    return c
  c.model.name = "segmenter"
  c.model.backbone = "cifar_resnet20"
  c.model.decoder = "fcn"
  c.model.num_classes = 11
  c.task.name = "segmentation"
  c.task.num_classes = 11
  c.dataset.name = "digit_scenes"
  c.dataset.size = 64
  c.dataset.num_digits = 3
  c.dataset.num_train = 4000
  c.dataset.num_test = 500
  c.batch_size = 32
  c.eval_batch_size = 100
  c.num_train_steps = int(rest[0]) if rest else 500
  c.checkpoint.best_metric = "miou"
  if mode == "transfer":
    c.transfer.source = "<set --config.transfer.source to the pretrain workdir>"
    c.transfer.target_module = "backbone"
  return c
