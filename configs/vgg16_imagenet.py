"""VGG-16 on ImageNet (Simonyan & Zisserman 2014, "Very deep convolutional networks for
large-scale image recognition"), configuration D, torchvision's layout (`vgg16`; use
`--config.model.name=vgg16_bn` for the BatchNorm variant).

Paper settings: batch 256, SGD momentum 0.9, weight decay 5e-4, dropout 0.5 on the first
two fully connected layers, learning rate 0.01 divided by 10 when the validation accuracy
stops improving (3 times), 370k iterations (74 epochs); 224 crops of rescaled images,
flips, colour shift. Paper: 27.0% top-1 / 8.8% top-5 error (single scale 256, Table 3);
torchvision's vgg16 weights: 71.59% top-1, 90.38% top-5.

Here the plateaus are fixed steps at epochs 30 and 60 of 74, and random-resized crops
replace the paper's scale jittering.

  python -m cnnrnn.main --config=configs/vgg16_imagenet.py --workdir=workdirs/vgg16 \\
      --config.dataset.data_dir=DIR_WITH_imagenet2012_ARRAY_RECORD
"""

from configs import imagenet


def get_config():
  return imagenet.config("vgg16", batch_size=256, learning_rate=0.01, weight_decay=5e-4,
                         epochs=74, decay_epochs=(30, 60))
