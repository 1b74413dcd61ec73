"""Where the single-frame model's direction accuracy comes from (experiments/hybrids/README.md).

For a trained `video_classifier` workdir without an RNN, on the test clips: the accuracy of
each frame's own prediction (one frame, no time at all) against the clip's prediction (the
mean of the frame logits); and, with no model, a rule that reads the direction from the
digit's mean position over the clip (which walls it spends its time near: a bag of frames
carries this, a single frame does not); and the best accuracy any model that ignores the
frames' order can reach on such clips (the unordered positions of the digit, tallied over
generated training clips).

  PYTHONPATH=$PWD python experiments/hybrids/single_frame_leak.py \
      --workdir=workdirs/hybrids/mm_single_frame_direction
"""

import collections
import json
import os

from absl import app, flags  # pylint: disable=g-multiple-import
import jax
import ml_collections
import numpy as np

from cnnrnn import data, models
from cnnrnn.data import pipeline
from cnnrnn.data.builders.mnist_generated import DIGIT, DIRECTIONS, moving_mnist_example
from cnnrnn.data.builders.mnist_generated import _rng  # pylint: disable=protected-access
from cnnrnn.train import runs
from cnnrnn.train.trainer import model_kwargs

_WORKDIR = flags.DEFINE_string("workdir", None, "A single-frame direction workdir.",
                               required=True)


def mean_position_rule(positions: np.ndarray, size: int) -> np.ndarray:
  """Direction ids guessed from the mean top-left position [B, T, 2] of the first digit:
  below / right of the centre of its range -> moving down / right (`DIRECTIONS` order)."""
  centre = (size - DIGIT) / 2
  mean = positions.mean(axis=1)  # [B, 2]
  down, right = mean[:, 0] > centre, mean[:, 1] > centre
  return np.where(down, 0, 2) + np.where(right, 0, 1)


def order_free_bound(num_frames: int, size: int, speed: int,
                     num: int = 20_000) -> tuple[float, dict[int, int]]:
  """The accuracy of the best direction guess from the clip's unordered digit positions
  (every frame is the digit at its position, so this bounds any model blind to frame
  order), tallied over `num` generated training clips (one digit; the pixels are not drawn
  from MNIST, the positions are the builder's own). With few clips per position set the
  tally overestimates slightly (the majority of a small sample).

  Returns:
    (the accuracy, {k: how many position sets occur with k different directions}).
  """
  blank, labels = np.zeros((1, DIGIT, DIGIT), np.uint8), np.zeros(1, np.int64)
  tallies = collections.defaultdict(collections.Counter)
  for i in range(num):
    ex = moving_mnist_example(_rng(0, "train", i), blank, labels, num_frames=num_frames,
                              size=size, num_digits=1, speed=speed)
    tallies[tuple(sorted(map(tuple, ex["positions"][:, 0].tolist())))][ex["direction"]] += 1
  shared = collections.Counter(len(c) for c in tallies.values())
  return sum(max(c.values()) for c in tallies.values()) / num, dict(sorted(shared.items()))


def main(argv):
  del argv
  workdir = _WORKDIR.value
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  variables = runs.load_variables(workdir)
  kwargs = model_kwargs(config.model)
  kwargs.setdefault("num_classes", len(DIRECTIONS))
  model = models.create(config.model.name, **kwargs)
  ds = config.dataset
  dataset = data.load(ds.name, ds.get("data_dir"), ds.get("manual_dir"), options=ds.to_dict())
  split = dataset.open_split("test", False)
  apply = jax.jit(lambda v, x: model.apply(v, x, return_frame_logits=True))
  clip_hits, frame_hits, rule_hits, total = 0, 0, 0, 0
  # Positions straight from the records: the preprocessed batches keep only model inputs.
  positions = np.stack([split[i]["positions"][:, 0] for i in range(len(split))])
  for batch in pipeline.eval_batches(split, global_batch_size=100,
                                     preprocess=data.preprocessor(ds, dataset, train=False)):
    real = batch["mask"] == 1
    logits, frame_logits = jax.device_get(apply(variables, batch["image"]))
    labels = batch["direction"][real]
    clip_hits += int((logits[real].argmax(-1) == labels).sum())
    frame_hits = frame_hits + (frame_logits[real].argmax(-1) == labels[:, None]).sum(axis=0)
    total += int(real.sum())
  labels = np.array([split[i]["direction"] for i in range(len(split))])
  rule_hits = int((mean_position_rule(positions, ds.size) == labels).sum())
  print(f"{total} test clips, {len(frame_hits)} frames each")
  print(f"clip (mean of frame logits): {clip_hits / total:.3f}")
  print("one frame alone, t=0..T-1: " + " ".join(f"{h / total:.3f}" for h in frame_hits))
  print(f"no model, mean position over the clip -> direction: {rule_hits / total:.3f}")
  bound, shared = order_free_bound(len(frame_hits), ds.size, ds.get("speed") or 3)
  print(f"best order-free guess (unordered positions, 20000 generated clips): {bound:.3f}; "
        f"position sets seen with k directions, k: count: {shared}")


if __name__ == "__main__":
  app.run(main)
