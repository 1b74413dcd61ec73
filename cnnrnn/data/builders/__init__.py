"""TensorFlow-free TFDS builders, by dataset name."""

from cnnrnn.data.builders.base import RawFilesBuilder
from cnnrnn.data.builders.cifar import Cifar10, Cifar10Folder
from cnnrnn.data.builders.digits import Digits
from cnnrnn.data.builders.mnist import FashionMnist, Mnist
from cnnrnn.data.builders.multi30k import Multi30k
from cnnrnn.data.builders.text import Ptb, TinyShakespeare

BUILDERS: dict[str, type[RawFilesBuilder]] = {
    "digits": Digits,
    "mnist": Mnist,
    "fashion_mnist": FashionMnist,
    "cifar10": Cifar10,
    "cifar10_folder": Cifar10Folder,
    "ptb": Ptb,
    "tiny_shakespeare": TinyShakespeare,
    "multi30k": Multi30k,
}
