"""The CNN + RNN hybrids end to end through the trainer: a video classifier on Moving MNIST
and a captioner on MNIST with captions, both generated from the real MNIST files, each
learning a little in well under a minute."""

import json

import pytest

from cnnrnn import train
from cnnrnn.analysis import hybrids
from configs import mnist_captions, moving_mnist_video
from tests.helpers import override, shared_dataset

ONE_DEVICE = (("data", 1),)  # in-process runs on one fake device, as tests/train/test_trainer.py


def _records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _tiny(c, data_dir, **overrides):
  c.mesh = ONE_DEVICE
  c.dataset.data_dir = data_dir
  c.dataset.manual_dir = shared_dataset("mnist")
  c.progress_bar = False
  c.checkpoint.async_save = False
  c.checkpoint_every_steps = 0
  c.optimizer.schedule = "constant"
  c.optimizer.learning_rate = 3e-3
  return override(c, **overrides)


@pytest.mark.slow
def test_video_classifier_learns_digit_identity(tmp_path):
  c = _tiny(moving_mnist_video.get_config("lstm"), str(tmp_path / "data"), **{
      "dataset.num_frames": 4, "dataset.size": 36, "dataset.num_train": 512,
      "dataset.num_test": 128, "dataset.min_frames": 2, "model.hidden_size": 32,
      "model.encoder_kwargs": dict(features=(8, 16), pool_every=1, dense=(32,)),
      "batch_size": 32, "eval_batch_size": 64, "num_train_steps": 60, "log_every_steps": 10})
  test = train.train_and_evaluate(c, str(tmp_path / "work"))
  train_losses = [r["loss"] for r in _records(tmp_path / "work") if r["split"] == "train"]
  assert train_losses[-1] < 0.8 * train_losses[0]
  assert test["num_examples"] == 128 and test["accuracy"] > 0.25  # chance: 0.1
  paths = hybrids.plot_workdir_strips(str(tmp_path / "work"), num_examples=2)
  assert [p.rsplit("/", 1)[1] for p in paths] == ["clip_0.png", "clip_1.png"]


@pytest.mark.slow
def test_captioner_learns_the_template(tmp_path):
  c = _tiny(mnist_captions.get_config("attention"), str(tmp_path / "data"), **{
      "dataset.num_train": 256, "dataset.num_test": 32,
      "model.encoder_kwargs": dict(features=(8, 16, 16), pool_every=1, dense=()),
      "model.embed_size": 16, "model.hidden_size": 32, "model.attention_size": 16,
      "batch_size": 32, "eval_batch_size": 16, "num_train_steps": 60, "log_every_steps": 10})
  test = train.train_and_evaluate(c, str(tmp_path / "work"))
  records = _records(tmp_path / "work")
  train_losses = [r["loss"] for r in records if r["split"] == "train"]
  assert train_losses[-1] < 0.6 * train_losses[0]
  assert set(test) >= {"loss", "nll", "accuracy", "perplexity", "attention_penalty",
                       "exact_match", "bleu"}
  # The template words ("the digit _ is ...") are learnt first: teacher-forced accuracy well
  # above chance (1/26) and a decoded BLEU above 0.
  assert test["accuracy"] > 0.4 and test["bleu"] > 5.0
  assert records[-1]["split"] == "test" and "bleu" in records[-1]
  paths = hybrids.plot_workdir_strips(str(tmp_path / "work"), num_examples=2, beam_size=2)
  assert [p.rsplit("/", 1)[1] for p in paths] == ["caption_0.png", "caption_1.png"]
