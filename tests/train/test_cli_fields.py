"""`--config.model.FIELD=VALUE` reaches every keyword argument of the chosen model, also
those its config file does not name; an unknown one is one line naming the allowed ones."""

import inspect
import json
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from cnnrnn import main
from cnnrnn import models
from cnnrnn.train import defaults
from cnnrnn.train import run_identity
from tests.helpers import cli

# Model arguments the command line cannot set: mappings of arguments for a part of the
# model (set them in a config file).
NOT_FROM_THE_COMMAND_LINE = {("rnn_lm", "cell_kwargs"), ("rnn_classifier", "cell_kwargs"),
                             ("video_classifier", "encoder_kwargs"),
                             ("captioner", "encoder_kwargs")}

# ml_collections loads config files with importlib's load_module.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def _parse(monkeypatch, config_file: str, *overrides: str):
  """The config `cnnrnn.main` parses from these flags (its config flag, on fresh flags)."""
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                           lock_config=False)
  values["config"].parser = main._WithModelFields(values["config"].parser)  # pylint: disable=protected-access
  argv = ["cnnrnn.main", f"--config={config_file}", *overrides]
  monkeypatch.setattr(sys, "argv", argv)
  values(argv)
  return holder.value


def _sample(field: str, parameter: inspect.Parameter) -> tuple[str, object]:
  """(a command-line value for model argument `parameter`, what the config then holds)."""
  if field in ("dtype", "param_dtype"):
    return "bfloat16", "bfloat16"
  default = parameter.default
  if isinstance(default, bool) or parameter.annotation in (bool, bool | None):
    return str(not default if isinstance(default, bool) else True), (
        not default if isinstance(default, bool) else True)
  if isinstance(default, tuple):
    value = tuple(x + 1 if isinstance(x, int) else x for x in default)
    return repr(value), value
  if isinstance(default, str):
    return "other", "other"
  if isinstance(default, float) or float in typing_args(parameter.annotation):
    return "0.25", 0.25
  if isinstance(default, int) or int in typing_args(parameter.annotation):
    return "3", 3
  if str in typing_args(parameter.annotation):
    return "other", "other"
  raise AssertionError(f"no sample value for {field}: {parameter}")


def typing_args(annotation) -> tuple:
  import typing  # pylint: disable=g-import-not-at-top

  return (annotation, *typing.get_args(annotation))


def test_every_model_argument_is_settable(monkeypatch):
  """Every keyword argument of every model, from a config file that names none of them
  (quickstart's conv_stack for the others' fields)."""
  unsettable = set()
  for name in models.names():
    for field, parameter in defaults.model_fields(name).items():
      if defaults._placeholder(field, parameter) is None:  # pylint: disable=protected-access
        unsettable.add((name, field))
        continue
      text, want = _sample(field, parameter)
      config = _parse(monkeypatch, "configs/quickstart.py", f"--config.model.name={name}",
                      f"--config.model.{field}={text}")
      assert config.model.name == name
      assert config.model[field] == want, (name, field, config.model[field], want)
  assert unsettable == NOT_FROM_THE_COMMAND_LINE


def test_pooling_and_activation_of_lenet5(monkeypatch):
  config = _parse(monkeypatch, "configs/lenet5_mnist.py", "--config.model.pooling=avg",
                  "--config.model.activation=tanh")
  assert (config.model.pooling, config.model.activation) == ("avg", "tanh")
  # Nothing else is added: config.json names what the file or the command line set.
  assert set(config.model.keys()) == {"name", "num_classes", "dtype", "pooling", "activation"}
  config = _parse(monkeypatch, "configs/lenet5_mnist.py")
  assert "pooling" not in config.model


def test_the_config_stays_locked(monkeypatch):
  config = _parse(monkeypatch, "configs/quickstart.py", "--config.model.kernel_size=5")
  assert config.model.kernel_size == 5
  with pytest.raises(AttributeError):
    config.model.poling = "avg"


def test_a_model_default_given_on_a_rerun_is_no_change():
  """config.json names the model arguments the file or the command line set; one given on
  a rerun with the model's own default value changes nothing, another value does."""
  old = {"model": {"name": "lenet5", "num_classes": 10}}
  same = {"model": {"name": "lenet5", "num_classes": 10, "pooling": "max", "dtype": "float32"}}
  assert run_identity.changed_fields(old, same) == {}
  assert run_identity.changed_fields(same, old) == {}
  other = {"model": {"name": "lenet5", "num_classes": 10, "pooling": "avg"}}
  assert run_identity.changed_fields(old, other) == {"model.pooling": ("max", "avg")}
  conv = {"model": {"name": "conv_stack", "features": [32, 64], "kernel_size": 3}}
  assert run_identity.changed_fields({"model": {"name": "conv_stack"}}, conv) == {}


@pytest.mark.parametrize("flag,message", [
    ("--config.model.poling=avg",
     "error: --config.model.poling: model 'conv_stack' has no field 'poling' (its fields: "
     "batch_norm, dense, dropout, dtype, features, global_pool, kernel_size, num_classes, "
     "param_dtype, pool_every); did you mean --config.model.pool_every"),
    ("--config.model.pooling=avg",  # lenet5's field, not conv_stack's.
     "error: --config.model.pooling: model 'conv_stack' has no field 'pooling'"),
])
@pytest.mark.slow
def test_unknown_model_field_is_one_line(tmp_path, data_dir, flag, message):
  cmd, kw = cli("configs/quickstart.py", tmp_path / "run", data_dir, 1, flag)
  result = subprocess.run(cmd, **kw, timeout=300)
  err = result.stderr.decode()
  assert result.returncode == 1, err[-2000:]
  assert message in err and "Traceback" not in err, err[-2000:]
  assert len([l for l in err.splitlines() if l.startswith("error:")]) == 1, err


@pytest.mark.slow
def test_a_field_the_file_leaves_out_trains(tmp_path, data_dir):
  """End to end: the added fields build the model and are recorded in config.json."""
  workdir = tmp_path / "run"
  cmd, kw = cli("configs/quickstart.py", workdir, data_dir, 1, "--config.num_train_steps=2",
                "--config.model.features=(4,)", "--config.model.dense=()",
                "--config.model.kernel_size=5", "--config.model.global_pool=True",
                "--config.eval_every_steps=0", "--config.checkpoint.every_secs=0")
  result = subprocess.run(cmd, **kw, timeout=600)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  model = json.loads((workdir / "config.json").read_text())["model"]
  assert model["kernel_size"] == 5 and model["global_pool"] is True
