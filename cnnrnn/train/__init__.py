"""The trainer: `train_and_evaluate(config, workdir)` and its parts."""

from cnnrnn.train.trainer import train_and_evaluate, validate_config
from cnnrnn.train.defaults import default_config
