"""Segmentation task: loss, pixel accuracy and IoU by hand, and one short real run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnrnn import tasks
from cnnrnn.tasks import segmentation
from tests.helpers import shared_dataset


def test_loss_and_pixel_accuracy_by_hand_with_padding():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 5, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (3, 4, 5))
  task = tasks.create("segmentation", num_classes=3)
  loss, sums = task.loss_and_metrics(jnp.asarray(logits), {
      "image": jnp.zeros((3, 4, 5, 1)), "segmentation": jnp.asarray(labels, jnp.uint8),
      "mask": jnp.array([1.0, 1.0, 0.0])})
  ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  assert float(sums["count"]) == 2
  np.testing.assert_allclose(float(loss), ce[:2].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(sums["pixel_accuracy"]),
                             (logits.argmax(-1) == labels)[:2].mean(axis=(1, 2)).sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="does not fit labels"):
    task.loss_and_metrics(jnp.asarray(logits[..., :2]), {"segmentation": jnp.asarray(labels)})
  with pytest.raises(ValueError, match="task.num_classes=1"):
    tasks.create("segmentation", num_classes=1)


def test_confusion_and_iou_by_hand():
  labels = np.array([[[0, 0, 1, 1], [2, 2, 2, 0]]])  # [1, 2, 4]
  pred = np.array([[[0, 1, 1, 1], [2, 2, 0, 0]]])
  logits = jax.nn.one_hot(pred, 4)  # class 3 never occurs
  confusion = np.asarray(segmentation.confusion_matrix(logits, jnp.asarray(labels), 4))[0]
  assert confusion.sum() == 8 and confusion[0, 0] == 2 and confusion[0, 1] == 1
  assert confusion[2, 0] == 1 and confusion[2, 2] == 2 and confusion[1, 1] == 2
  iou = segmentation.iou_from_confusion(confusion)
  # class 0: |pred 0 & label 0| = 2, union = 3 labels + 3 preds - 2 = 4; class 1: 2 / 3;
  # class 2: 2 / 3; class 3: absent from both.
  np.testing.assert_allclose(iou[:3], [0.5, 2 / 3, 2 / 3])
  assert np.isnan(iou[3])

  class OneHot:
    def apply(self, variables, image, train=False):
      del variables, train
      return jax.nn.one_hot(image[..., 0].astype(jnp.int32), 4)

  task = tasks.create("segmentation", num_classes=4)
  evaluator = task.evaluator(OneHot(), None)
  batch = {"image": jnp.asarray(pred[..., None]), "segmentation": jnp.asarray(labels)}
  rows = jax.device_get(evaluator.predict({}, batch))
  scores = evaluator.score({"confusion": list(rows["confusion"]) * 2}, "test")
  assert scores["miou"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
  assert "iou_c3" not in scores and scores["iou_c1"] == pytest.approx(2 / 3)
  # Everything the evaluator scores is declared for a 4-class task.
  assert set(scores) <= set(segmentation.Segmentation.metric_names_for({"num_classes": 4}))


def test_declared_metric_names_include_each_class():
  names = segmentation.Segmentation.metric_names_for({"num_classes": 11})
  assert names[:3] == ("loss", "pixel_accuracy", "miou") == tasks.metric_names("segmentation")
  assert names[3:] == tuple(f"iou_c{k}" for k in range(11))
  assert segmentation.Segmentation.metric_names_for({}) == ("loss", "pixel_accuracy", "miou")
  with pytest.raises(ValueError, match="task.num_classes=1"):
    segmentation.Segmentation.metric_names_for({"num_classes": 1})


def test_best_metric_may_be_a_class_iou_of_the_configured_classes():
  import importlib  # pylint: disable=import-outside-toplevel
  from cnnrnn.train import config_schema  # pylint: disable=import-outside-toplevel
  config = importlib.import_module("configs.digit_segmentation").get_config()
  config.checkpoint.best_metric, config.checkpoint.best_mode = "iou_c3", "max"
  config_schema.validate(config)
  config.checkpoint.best_metric = f"iou_c{config.task.num_classes}"
  with pytest.raises(ValueError, match="checkpoint.best_metric=.*iou_c0"):
    config_schema.validate(config)


@pytest.mark.slow
def test_digit_scenes_segmenter_learns_through_the_trainer(tmp_path, data_dir):
  from cnnrnn import train  # pylint: disable=g-import-not-at-top
  from configs import digit_segmentation  # pylint: disable=g-import-not-at-top

  c = digit_segmentation.get_config("scratch,80")
  c.dataset.data_dir = data_dir
  c.dataset.manual_dir = shared_dataset("mnist")
  c.dataset.size, c.dataset.num_digits = 32, 1
  c.dataset.num_train, c.dataset.num_test = 640, 64
  c.model.backbone = "cifar_resnet8"
  c.batch_size, c.eval_batch_size = 16, 64
  c.optimizer.learning_rate = 3e-3
  c.progress_bar = False
  c.mesh = (("data", 1),)
  metrics = train.train_and_evaluate(c, str(tmp_path))
  from cnnrnn.data import sources  # pylint: disable=g-import-not-at-top
  test = sources.load("digit_scenes", data_dir, c.dataset.manual_dir,
                      options=c.dataset.to_dict()).split("test")
  background = np.mean([np.mean(test[i]["segmentation"] == 0) for i in range(len(test))])
  assert metrics["num_examples"] == 64
  # Better than calling every pixel background, and the background class is found.
  assert metrics["pixel_accuracy"] > background + 0.01
  assert metrics["iou_c0"] > 0.8 and 0 < metrics["miou"] < 1
  # Every per-class IoU the run logged is a declared name of an 11-class task.
  ious = {k for k in metrics if k.startswith("iou_c")}
  declared = segmentation.Segmentation.metric_names_for({"num_classes": 11})
  assert "iou_c0" in ious and ious <= set(declared)
