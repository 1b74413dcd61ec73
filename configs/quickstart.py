"""Quickstart: a small CNN on scikit-learn's bundled 8x8 digits. Runs offline, ~1 minute.

  python -m cnnrnn.main --config=configs/quickstart.py --workdir=/tmp/cnnrnn_quickstart

The dataset ships inside scikit-learn (1,797 images; a fixed 1,433/364 split), so nothing
is downloaded. Expected: test accuracy ~0.98-0.99 on 2 CPU cores in about a minute.
"""

from cnnrnn.train import default_config


def get_config():
  c = default_config()
  c.model.name = "conv_stack"
  c.model.num_classes = 10
  c.model.features = (32, 64)
  c.model.pool_every = 1
  c.model.dense = (128,)
  c.model.batch_norm = False
  c.model.dropout = 0.0
  c.dataset.name = "digits"
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 30
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.log_every_steps = 20
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  return c
