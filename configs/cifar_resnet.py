"""CIFAR ResNets (He, Zhang, Ren & Sun 2015, "Deep residual learning for image
recognition", section 4.2): depth 6n+2 with 3 stages of 16/32/64 channels and option-A
(zero-padding identity) shortcuts. ARG is the depth (20, 32, 44, 56 or 110), optionally
followed by a number of steps: `cifar_resnet.py:20,6000` runs the same schedule shrunk to
6000 steps (learning rate divided by 10 at 50% and 75% of the run, as 32k/48k are of 64k).

Paper settings: batch 128, SGD momentum 0.9, weight decay 1e-4, learning rate 0.1 divided
by 10 at 32k and 48k iterations, 64k iterations in all; 4-pixel pad + random 32x32 crop +
horizontal flip; per-channel normalisation. Test error (Table 6): ResNet-20 8.75%,
-32 7.51%, -44 7.17%, -56 6.97%, -110 6.43%.

  python -m cnnrnn.main --config=configs/cifar_resnet.py:20 --workdir=workdirs/resnet20 \
      --config.dataset.manual_dir=DIR_WITH_cifar-10-binary.tar.gz

On the JPEG-lossy image-folder copy (not comparable with the paper to the decimal):
      --config.dataset.name=cifar10_folder \
      --config.dataset.manual_dir=../shared/datasets/cifar10_jpeg_lossy
`cifar_resnet.py:20,10000` on that copy reached 84.70% test accuracy (15.30% error) in 48
minutes on 2 CPU cores (experiments/cifar_resnet/README.md).

ResNet-110 starts with a warm-up (the paper: lr 0.01 until training error < 80%, ~400
iterations); here a 400-step linear warm-up, after which the step schedule starts.
The paper trains on 45k images and validates on 5k; like most reimplementations this
config trains on all 50k and reports the test split.
"""

from cnnrnn.train import default_config

DEPTHS = (20, 32, 44, 56, 110)


def get_config(arg: str = "20"):
  depth, _, steps = arg.partition(",")
  if not depth.isdigit() or int(depth) not in DEPTHS:
    raise ValueError(f"configs/cifar_resnet.py:{arg}; allowed depths: {DEPTHS}")
  if steps and not (steps.isdigit() and int(steps) > 0):
    raise ValueError(f"configs/cifar_resnet.py:{arg}; the number of steps must be a positive integer")
  total = int(steps) if steps else 64_000
  c = default_config()
  c.model.name = f"cifar_resnet{int(depth)}"
  c.model.num_classes = 10
  c.dataset.name = "cifar10"
  c.dataset.augment = "crop_flip"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_train_steps = total
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "step"
  c.optimizer.decay_boundaries = (total // 2, total * 3 // 4)
  c.optimizer.decay_factor = 0.1
  if int(depth) == 110:
    c.optimizer.warmup_steps = 400
  # Dots through Eigen rather than YNNPACK: 1.18x on ResNet-20 on CPU with XLA's convolutions;
  # about neutral with the native ones (cnnrnn.accel; experiments/benchmarks).
  c.xla_flags = "--xla_cpu_experimental_ynn_fusion_type="
  c.log_every_steps = 100
  c.eval_every_steps = min(2000, max(total // 12, 1))
  c.checkpoint_every_steps = c.eval_every_steps
  return c
