"""A new task and a new dataset option need no change under cnnrnn/train: the schema and
the trainer read what they declare (tasks: fields, `check_fields`, `metric_names`, an
`evaluator`; dataset builders: `config_options()`)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import tasks
from cnnrnn import train
from cnnrnn.data import builders
from cnnrnn.data.options import Option
from cnnrnn.tasks import base
from cnnrnn.train import config_schema
from configs import quickstart


@dataclasses.dataclass(frozen=True)
class ArgmaxEvaluator:
  """Scores the split on the predicted classes, on the host (the generic loop's path)."""

  batch_keys = ("image", "label")
  model: object

  def predict(self, variables, batch):
    logits = self.model.apply(variables, batch["image"], train=False)
    return {"predicted": jnp.argmax(logits, -1), "label": batch["label"]}

  def score(self, rows, split):
    hits = [int(p == t) for p, t in zip(rows["predicted"], rows["label"])]
    return {"host_accuracy": float(np.mean(hits)), "scored_rows": len(hits)}


@dataclasses.dataclass(frozen=True)
class HingeClassification(base.CheckedFields):
  """A toy task: multiclass hinge loss, its own field, metric and evaluator."""

  num_classes: int
  margin: float = 1.0

  metric_names = ("loss", "hinge_errors", "host_accuracy")

  @classmethod
  def check_fields(cls, values):
    if "margin" in values:
      base.require("margin", values["margin"], lambda v: v > 0, "a number > 0")

  def model_inputs(self, batch):
    return (batch["image"],), {}

  def loss_and_metrics(self, logits, batch):
    mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
    correct = jnp.take_along_axis(logits, batch["label"][:, None], -1)
    hinge = jnp.maximum(0.0, self.margin + logits - correct).sum(-1) - self.margin
    count = mask.sum()
    errors = ((jnp.argmax(logits, -1) != batch["label"]) * mask).sum()
    return (hinge * mask).sum() / jnp.maximum(count, 1.0), {
        "loss": (hinge * mask).sum(), "hinge_errors": errors, "count": count}

  def evaluator(self, model, streams):
    del streams
    return ArgmaxEvaluator(model)


@pytest.fixture
def toy_task_and_option(monkeypatch):
  monkeypatch.setitem(tasks.TASKS, "hinge", HingeClassification)  # undone after the test
  digits = builders.BUILDERS["digits"]
  monkeypatch.setattr(digits, "config_options",
                      classmethod(lambda cls: {"label_noise": Option(float, minimum=0.0)}))


def _config(data_dir, **fields):
  c = quickstart.get_config()
  c.task.name = "hinge"
  c.dataset.data_dir = data_dir
  c.mesh = (("data", 1),)
  c.progress_bar = False
  c.num_train_steps = 2
  c.checkpoint.async_save = False
  for k, v in fields.items():
    block, name = k.split(".")
    c[block][name] = v
  return c


def test_the_schema_reads_the_declarations(toy_task_and_option, data_dir):
  config_schema.validate(_config(data_dir, **{"task.margin": 0.5, "dataset.label_noise": 0.1,
                                              "checkpoint.best_metric": "hinge_errors"}))
  bad = [({"dataset.label_noise": -1.0}, "dataset.label_noise=-1.0; allowed: a finite number in [0, inf)"),
         ({"dataset.label_nosie": 0.1}, "did you mean dataset.label_noise"),
         ({"dataset.label_noise": "high"}, "dataset.label_noise='high'; allowed: a number"),
         ({"task.margin": 0.0}, "task.margin=0.0; allowed: a number > 0"),
         ({"task.margni": 1.0}, "did you mean task.margin"),
         ({"task.margin": "wide"}, "task.margin='wide'; allowed: a number"),
         ({"checkpoint.best_metric": "accuracy", "checkpoint.keep_best": True},
          "a metric task 'hinge' logs: loss, hinge_errors, host_accuracy")]
  for fields, message in bad:
    with pytest.raises(ValueError) as e:
      config_schema.validate(_config(data_dir, **fields))
    assert message in str(e.value), str(e.value)


@pytest.mark.slow
def test_the_trainer_runs_the_tasks_evaluator(toy_task_and_option, data_dir, tmp_path):
  metrics = train.train_and_evaluate(_config(data_dir), str(tmp_path))
  assert metrics["scored_rows"] == metrics["num_examples"] == 364  # every test row, once
  # The evaluator's host-side accuracy is 1 - the task's own error rate on the same split.
  np.testing.assert_allclose(metrics["host_accuracy"], 1.0 - metrics["hinge_errors"], atol=1e-6)
