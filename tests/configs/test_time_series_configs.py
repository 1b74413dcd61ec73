"""The time-series and segmentation configs build, validate, and refuse bad arguments."""

import importlib

import pytest

from cnnrnn import models
from cnnrnn.train import validate_config

CONFIGS = [
    ("mackey_glass", a) for a in ("lstm,84", "gru,6", "simple,1", "lstm,1,500")] + [
    ("ucr_classification", f"{m},{d}") for m in ("ts_fcn", "ts_resnet", "lstm_fcn",
                                                 "rnn_classifier")
    for d in ("ucr_gunpoint", "ucr_arrowhead")] + [
    ("forecasting", a) for a in ("airline,lstm", "sunspots,gru,5", "airline,ts_fcn,12,300")] + [
    ("digit_segmentation", a) for a in ("pretrain", "scratch,100", "transfer")]


@pytest.mark.parametrize("name,arg", CONFIGS)
def test_config_validates(name, arg):
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  validate_config(c, num_devices=1)
  models.get_constructor(c.model.name)


@pytest.mark.parametrize("name,arg", [
    ("mackey_glass", "lstm"), ("mackey_glass", "transformer,6"), ("ucr_classification", "ts_fcn"),
    ("ucr_classification", "ts_fcn,ucr_wafer"), ("forecasting", "airline,arima"),
    ("digit_segmentation", "scratch,x"), ("digit_segmentation", "deeplab")])
def test_bad_arguments_name_the_config(name, arg):
  with pytest.raises(ValueError, match=f"configs/{name}.py"):
    importlib.import_module(f"configs.{name}").get_config(arg)
