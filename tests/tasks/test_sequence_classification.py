"""Time-series classification: the classification task on [B, T, F] series (UCR), with the 1-D
CNNs and the RNN classifier, through the trainer."""

import pytest

from cnnrnn import train
from configs import ucr_classification


@pytest.mark.slow
@pytest.mark.parametrize("model,steps,floor", [("ts_fcn", 100, 0.85),
                                               ("rnn_classifier", 200, 0.75)])
def test_italy_power_demand_is_learned(tmp_path, data_dir, model, steps, floor):
  c = ucr_classification.get_config(f"{model},ucr_italy_power_demand,{steps}")
  c.dataset.data_dir = data_dir
  if model == "ts_fcn":
    c.model.widths = (32, 64, 32)
  else:
    c.model.hidden_size = 32
    c.optimizer.learning_rate = 1e-2
  c.progress_bar = False
  c.mesh = (("data", 1),)
  metrics = train.train_and_evaluate(c, str(tmp_path))
  # 1,029 test series of two classes in about equal shares: chance is ~0.5.
  assert metrics["num_examples"] == 1029
  assert metrics["accuracy"] > floor
