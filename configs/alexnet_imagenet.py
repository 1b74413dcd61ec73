"""AlexNet on ImageNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet classification
with deep convolutional neural networks"), torchvision's single-tower layout (64-192-384-
256-256 channels, no local response normalisation), so torchvision's weights load.

Paper settings: batch 128, SGD momentum 0.9, weight decay 5e-4, dropout 0.5 in the first
two fully connected layers, learning rate 0.01 divided by 10 when the validation error
stops improving (3 times), ~90 epochs; 224 crops of 256x256 images, flips, PCA colour
noise. Paper: 40.7% top-1 / 18.2% top-5 error (one CNN, Table 2); torchvision's weights:
56.52% top-1, 79.07% top-5.

Here the plateaus are fixed steps at epochs 30 and 60 of 90, and random-resized crops
replace the paper's fixed-scale crops and colour noise.

  python -m cnnrnn.main --config=configs/alexnet_imagenet.py --workdir=workdirs/alexnet \\
      --config.dataset.data_dir=DIR_WITH_imagenet2012_ARRAY_RECORD
"""

from configs import imagenet


def get_config():
  return imagenet.config("alexnet", batch_size=128, learning_rate=0.01, weight_decay=5e-4,
                         epochs=90, decay_epochs=(30, 60))
