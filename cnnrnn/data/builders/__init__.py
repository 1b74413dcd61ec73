"""TensorFlow-free TFDS builders, by dataset name."""

from cnnrnn.data.builders.base import RawFilesBuilder
from cnnrnn.data.builders.cifar import Cifar10, Cifar10Folder
from cnnrnn.data.builders.digit_scenes import DigitScenes
from cnnrnn.data.builders.digits import Digits
from cnnrnn.data.builders.mnist import FashionMnist, Mnist
from cnnrnn.data.builders.mnist_generated import MnistCaptions, MovingMnist
from cnnrnn.data.builders.multi30k import Multi30k
from cnnrnn.data.builders.text import Ptb, TinyShakespeare
from cnnrnn.data.builders.time_series import Airline, MackeyGlass, Sunspots
from cnnrnn.data.builders.ucr import ArrowHead, GunPoint, ItalyPowerDemand, OSULeaf

BUILDERS: dict[str, type[RawFilesBuilder]] = {
    "digits": Digits,
    "mnist": Mnist,
    "fashion_mnist": FashionMnist,
    "cifar10": Cifar10,
    "cifar10_folder": Cifar10Folder,
    "ptb": Ptb,
    "tiny_shakespeare": TinyShakespeare,
    "multi30k": Multi30k,
    "moving_mnist": MovingMnist,
    "mnist_captions": MnistCaptions,
    "digit_scenes": DigitScenes,
    "mackey_glass": MackeyGlass,
    "sunspots": Sunspots,
    "airline": Airline,
    **{cls.name: cls for cls in (GunPoint, ItalyPowerDemand, ArrowHead, OSULeaf)},
}
