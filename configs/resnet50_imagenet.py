"""ResNet-50 on ImageNet (He, Zhang, Ren & Sun 2015, "Deep residual learning for image
recognition"), torchvision's layout (stride 2 in the 3x3 convolution of each bottleneck).

Paper settings: batch 256, SGD momentum 0.9, weight decay 1e-4, learning rate 0.1 divided
by 10 when the error plateaus (about every 30 epochs), 600k iterations (~120 epochs); scale
augmentation, 224 crops, flips; BatchNorm after every convolution, no dropout. Paper:
20.74% top-1 / 5.25% top-5 error (10-crop testing, Table 3); torchvision's single-crop
weights (this recipe: 90 epochs, steps at 30 and 60): 76.13% top-1, 92.86% top-5.

  python -m cnnrnn.main --config=configs/resnet50_imagenet.py --workdir=workdirs/resnet50 \\
      --config.dataset.data_dir=DIR_WITH_imagenet2012_ARRAY_RECORD

Scale out with more processes (launch/); batch_size is global.
"""

from configs import imagenet


def get_config():
  return imagenet.config("resnet50", batch_size=256, learning_rate=0.1, weight_decay=1e-4,
                         epochs=90, decay_epochs=(30, 60))
