"""Datasets (TF-free TFDS builders), Grain pipelines, preprocessing, synthetic tasks."""

from cnnrnn.data.image import ImagePreprocess
from cnnrnn.data.pipeline import eval_batches, train_dataset
from cnnrnn.data.sources import Dataset, load, prepare
from cnnrnn.data.streams import Streams, config_options, make_streams, preprocessor
