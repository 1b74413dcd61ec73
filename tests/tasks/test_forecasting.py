"""Forecasting task: metrics by hand, seasonal-naive baseline, rollouts, field checks, and one
short real run through the trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import tasks
from cnnrnn.tasks import forecasting


def _batch(targets, naive, scale, mask=None):
  b = targets.shape[0]
  out = {"inputs": jnp.zeros((b, 4, targets.shape[2])), "targets": jnp.asarray(targets),
         "naive": jnp.asarray(naive), "mase_scale": jnp.asarray(scale)}
  if mask is not None:
    out["mask"] = jnp.asarray(mask)
  return out


def test_metrics_by_hand_with_padding():
  rng = np.random.default_rng(0)
  targets = rng.normal(size=(3, 2, 2)).astype(np.float32)
  forecast = targets + rng.normal(size=targets.shape).astype(np.float32)
  naive = targets + 2.0
  scale = np.array([[0.5, 2.0]] * 3, np.float32)
  task = tasks.create("forecasting")
  loss, sums = task.loss_and_metrics(jnp.asarray(forecast.reshape(3, 4)),
                                     _batch(targets, naive, scale, [1.0, 1.0, 0.0]))
  err = (forecast - targets)[:2]
  assert float(sums["count"]) == 2
  np.testing.assert_allclose(float(loss), (err ** 2).mean(), rtol=1e-5)
  np.testing.assert_allclose(float(sums["mse"]), (err ** 2).mean(axis=(1, 2)).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(sums["mae"]), np.abs(err).mean(axis=(1, 2)).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(sums["mase"]),
                             (np.abs(err) / scale[:2, None, :]).mean(axis=(1, 2)).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(sums["last_mse"]), (err[:, -1] ** 2).mean(axis=1).sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(sums["naive_mse"]), 2 * 4.0, rtol=1e-5)
  np.testing.assert_allclose(float(sums["naive_mase"]), 2 * (2 / 0.5 + 2 / 2.0) / 2, rtol=1e-5)
  means = {k: float(v) / 2 for k, v in sums.items() if k != "count"}
  derived = task.derived_metrics(means)
  assert derived["nrmse"] == pytest.approx(means["mse"] ** 0.5)
  assert derived["naive_last_nrmse"] == pytest.approx(2.0)
  mae_task = tasks.create("forecasting", loss="mae")
  loss, _ = mae_task.loss_and_metrics(jnp.asarray(forecast), _batch(targets, naive, scale))
  np.testing.assert_allclose(float(loss), np.abs(forecast - targets).mean(), rtol=1e-5)


def test_a_perfect_forecast_scores_zero_and_a_wrong_size_is_refused():
  targets = np.ones((2, 3, 1), np.float32)
  task = tasks.create("forecasting")
  _, sums = task.loss_and_metrics(jnp.ones((2, 3)), _batch(targets, targets, np.ones((2, 1))))
  assert all(float(sums[k]) == 0 for k in ("mse", "mae", "mase", "naive_mse"))
  with pytest.raises(ValueError, match="set the model's output size to 3"):
    task.loss_and_metrics(jnp.ones((2, 4)), _batch(targets, targets, np.ones((2, 1))))
  with pytest.raises(ValueError, match="task.loss='huber'; allowed: mse, mae"):
    tasks.create("forecasting", loss="huber")
  assert not hasattr(task, "evaluator")  # a direct task scores in the loss pass
  assert "last_nrmse" in tasks.metric_names("forecasting")


def test_autoregressive_training_targets_and_rollout():
  task = tasks.create("forecasting", autoregressive=True)
  targets = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
  loss, _ = task.loss_and_metrics(jnp.asarray(targets[:, :1, 0]),
                                  _batch(targets, targets, np.ones((2, 1))))
  assert float(loss) == 0  # one-step targets: the first future step
  # A one-step model "last value + 1" continues a ramp exactly.
  context = jnp.arange(8.0).reshape(2, 4, 1)
  out = forecasting.rollout(lambda w: w[:, -1] + 1, context, 5)
  np.testing.assert_array_equal(out[..., 0], [[4, 5, 6, 7, 8], [8, 9, 10, 11, 12]])

  class LastPlusOne:
    def apply(self, variables, w, train=False):
      del variables, train
      return w[:, -1] + 1

  evaluator = task.evaluator(LastPlusOne(), None)
  batch = _batch(np.asarray(out), np.zeros((2, 5, 1)), np.full((2, 1), 2.0))
  batch["inputs"] = context
  rows = jax.device_get(evaluator.predict({}, batch))
  scores = evaluator.score({k: list(v) for k, v in rows.items()}, "test")
  assert scores["rollout_mse"] == 0 and scores["rollout_mase"] == 0
  batch["targets"] = batch["targets"] + 1.0  # every step off by one
  rows = jax.device_get(evaluator.predict({}, batch))
  scores = evaluator.score({k: list(v) for k, v in rows.items()}, "test")
  assert scores["rollout_mae"] == pytest.approx(1.0) and scores["rollout_mase"] == pytest.approx(0.5)


@pytest.mark.slow
def test_mackey_glass_lstm_beats_the_naive_forecast_through_the_trainer(tmp_path, data_dir):
  from cnnrnn import train  # pylint: disable=g-import-not-at-top
  from configs import mackey_glass  # pylint: disable=g-import-not-at-top

  c = mackey_glass.get_config("lstm,6,300")
  c.optimizer.learning_rate = 1e-2
  c.dataset.data_dir = data_dir
  c.dataset.num_points = 1000
  c.dataset.context_len = 16
  c.model.hidden_size = 16
  c.eval_every_steps = 0
  c.progress_bar = False
  c.mesh = (("data", 1),)
  metrics = train.train_and_evaluate(c, str(tmp_path))
  assert metrics["num_examples"] == 200 - 6 + 1
  # The naive forecast (x(t+6) = x(t)) has NRMSE ~0.8 on this series; a trained LSTM is far better.
  assert metrics["naive_last_nrmse"] > 0.6
  assert metrics["last_nrmse"] < 0.5 * metrics["naive_last_nrmse"]
