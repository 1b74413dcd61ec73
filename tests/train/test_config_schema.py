"""Every bad input gets a clear error naming the field, before anything is compiled (or
written: the workdir is not even created)."""

import math

import jax
import pytest

from cnnrnn import train
from cnnrnn.train import config_schema
from configs import quickstart
from tests.helpers import override

NAN, INF = math.nan, math.inf

BAD = [
    # (field, value, what the message must contain besides the field name)
    ("optimizer.learning_rate", NAN, "finite number in (0, inf)"),
    # A task that carries a state across batches, on an image model: the mismatch is named.
    ("task.name", "language_model", "model.name='conv_stack' does not (cnnrnn.models.stateful); "
     "allowed models: rnn_lm"),
    ("optimizer.learning_rate", INF, "finite number in (0, inf)"),
    ("optimizer.learning_rate", -INF, "finite number"),
    ("optimizer.learning_rate", 0.0, "(0, inf)"),
    ("optimizer.learning_rate", -1e-3, "(0, inf)"),
    ("optimizer.momentum", 5.0, "[0, 1)"),
    ("optimizer.momentum", 1.0, "[0, 1)"),
    ("optimizer.momentum", -0.5, "[0, 1)"),
    ("optimizer.weight_decay", -1e-4, "[0, inf)"),
    ("optimizer.weight_decay", NAN, "finite"),
    ("optimizer.warmup_steps", -5, "[0, inf)"),
    ("optimizer.clip_norm", -1.0, "[0, inf)"),
    ("optimizer.b1", 1.0, "[0, 1)"),
    ("optimizer.b2", 1.5, "[0, 1)"),
    ("optimizer.eps", 0.0, "(0, inf)"),
    ("optimizer.decay_every", 0, "[1, inf)"),
    ("optimizer.schedule", "cosine_decay", "constant, step, cosine"),
    ("optimizer.name", "adagrad", "sgd, momentum"),
    ("optimizer.learing_rate", 0.1, "did you mean optimizer.learning_rate"),
    ("num_train_steps", -1, "[0, inf)"),
    ("num_epochs", -1, "[0, inf)"),
    ("batch_size", 0, "[1, inf)"),
    ("batch_size", -8, "[1, inf)"),
    ("eval_batch_size", 0, "[1, inf)"),
    ("grad_accum_steps", 0, "[1, inf)"),
    ("seed", -1, "[0, inf)"),
    ("log_every_steps", -1, "[0, inf)"),
    ("eval_every_steps", -10, "[0, inf)"),
    ("checkpoint_every_steps", -1, "[0, inf)"),
    ("profile_steps", -1, "[0, inf)"),
    ("checkpoint.max_to_keep", 0, "[1, inf)"),
    ("checkpoint.max_to_keep", -1, "[1, inf)"),
    ("checkpoint.best_metric", "acc", "accuracy, top5_accuracy"),
    ("checkpoint.best_mode", "median", "'min', 'max'"),
    ("checkpoint.every_secs", -5.0, "[0, inf)"),
    ("checkpoint.every_secs", NAN, "finite"),
    ("checkpoint.keep_bset", True, "did you mean checkpoint.keep_best"),
    ("unknown_field", 3, "is not a config field"),
    ("dataset.crop_fraction", 0.0, "(0, 1]"),
    ("dataset.read_threads", 0, "[1, inf)"),
    ("dataset.cache", "sometimes", "True, False, 'auto'"),
    ("dataset.augment", "flip", "'none', 'crop_flip'"),
    ("dataset.pad_to", -4, "[1, inf)"),
    ("dataset.seq_lenght", 10, "did you mean dataset.seq_len"),
    ("task.label_smoothing", 1.0, "[0, 1)"),
    ("task.label_smooth", 0.1, "did you mean task.label_smoothing"),
    ("task.name", "detection", "known tasks"),
    ("model.dropout", 1.5, "[0, 1)"),
    ("model.dropout", -0.1, "[0, 1)"),
    ("model.features", (32, -64), "integers >= 1"),
    ("model.features", (0, 64), "integers >= 1"),
    ("model.num_classes", 0, "integers >= 1"),
    ("model.kernel_size", -3, "integers >= 1"),
    ("model.pool_every", -1, "[0, inf)"),
    ("model.dtype", "float8", "float32, bfloat16, float16"),
    ("model.dtype", "bf16", "float32, bfloat16, float16"),
    ("model.featurs", (32,), "did you mean model.features"),
    ("model.dense", (128, -1), "integers >= 1"),
    ("model.name", "lenet7", "known models"),
]


def _config(data_dir, field, value):
  c = quickstart.get_config()
  c.mesh = (("data", 1),)
  c.dataset.data_dir = data_dir
  c.progress_bar = False
  c.num_train_steps = 4
  c.optimizer.b1 = 0.9  # Options that only some optimizers read, set here to be overridden.
  c.optimizer.decay_every = 1
  return override(c, **{field: value})


@pytest.mark.parametrize("field,value,allowed", BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
def test_bad_input_named_before_compiling(data_dir, tmp_path, monkeypatch, field, value, allowed):
  def no_compile(*args, **kwargs):
    raise AssertionError("jax.jit was called before the config error was reported")
  monkeypatch.setattr(jax, "jit", no_compile)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(_config(data_dir, field, value), str(workdir))
  message = str(e.value)
  assert field in message and allowed in message, message
  assert "\n" not in message  # One line.
  assert not workdir.exists()  # Nothing written.


def test_both_lengths_zero(data_dir, tmp_path):
  c = _config(data_dir, "num_train_steps", 0)
  c.num_epochs = 0
  with pytest.raises(ValueError, match=r"num_train_steps=0 and num_epochs=0"):
    config_schema.validate(c)


def test_every_shipped_config_passes():
  import importlib  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top

  args = {"adding_problem": "lstm,10"}
  for path in sorted(pathlib.Path(quickstart.__file__).parent.glob("*.py")):
    if path.stem == "__init__":
      continue
    module = importlib.import_module(f"configs.{path.stem}")
    if not hasattr(module, "get_config"):
      continue  # A shared base (configs/imagenet.py).
    config = module.get_config(args[path.stem]) if path.stem in args else module.get_config()
    config_schema.validate(config)


@pytest.mark.slow
def test_bfloat16_trains(data_dir, tmp_path):
  c = _config(data_dir, "model.dtype", "bfloat16")
  c.checkpoint.async_save = False
  metrics = train.train_and_evaluate(c, str(tmp_path))
  assert math.isfinite(metrics["loss"]) and metrics["num_examples"] == 364
