"""What the generated captions get right (experiments/hybrids/README.md).

Every canvas has two true captions, "the digit A is on the left of the digit B ." and
"the digit B is on the right of the digit A ." (top/bottom alike), and the generator picks
one of them by a coin flip that the image does not show: exact match against the reference
is at most about 50% for any captioner. This decodes the test canvases greedily with a
trained captioner workdir and reports the exact match, how often the caption is one of the
two true ones, the two digits right (as a pair, either order), the layout right (left/right
vs top/bottom), and the attention entropy per word (nats; uniform over L locations: ln L).

  PYTHONPATH=$PWD python experiments/hybrids/caption_errors.py \
      --workdir=workdirs/hybrids/captions_attention
"""

import json
import os

from absl import app, flags  # pylint: disable=g-multiple-import
import jax
import ml_collections
import numpy as np

from cnnrnn import data, decode, models
from cnnrnn.analysis import hybrids
from cnnrnn.data import pipeline
from cnnrnn.data.builders.mnist_generated import CAPTION_LENGTH, encode_caption
from cnnrnn.train import runs
from cnnrnn.train.trainer import model_kwargs

_WORKDIR = flags.DEFINE_string("workdir", None, "A captioner workdir.", required=True)

SUBJECT, RELATION, OBJECT = 2, 6, 10  # positions of S, the relation's last word and O
_LEFT, _RIGHT, _TOP, _BOTTOM = encode_caption(["left", "right", "top", "bottom"]).tolist()
_OPPOSITE = {_LEFT: _RIGHT, _RIGHT: _LEFT, _TOP: _BOTTOM, _BOTTOM: _TOP}


def other_true_caption(refs: np.ndarray) -> np.ndarray:
  """[N, 12] reference ids -> the other true caption of each canvas (digits swapped, the
  relation reversed; "on the"/"at the" stay as they are)."""
  other = refs.copy()
  other[:, SUBJECT], other[:, OBJECT] = refs[:, OBJECT], refs[:, SUBJECT]
  other[:, RELATION] = [_OPPOSITE[int(r)] for r in refs[:, RELATION]]
  return other


def main(argv):
  del argv
  workdir = _WORKDIR.value
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  variables = runs.load_variables(workdir)
  model = models.create(config.model.name, **model_kwargs(config.model))
  ds = config.dataset
  dataset = data.load(ds.name, ds.get("data_dir"), ds.get("manual_dir"), options=ds.to_dict())
  generate = jax.jit(lambda v, x: decode.generate(model, v, x, max_len=CAPTION_LENGTH + 1)[0])
  right = {"exact match": [], "a true caption": [], "digit pair": [], "layout": []}
  entropies = []
  for batch in pipeline.eval_batches(dataset.open_split("test", False), global_batch_size=200,
                                     preprocess=data.preprocessor(ds, dataset, train=False)):
    real = batch["mask"] == 1
    tokens = np.asarray(generate(variables, batch["image"]))[real]
    refs = batch["caption"][real]
    ended = tokens[:, CAPTION_LENGTH] == decode.EOS_ID
    same = (tokens[:, :CAPTION_LENGTH] == refs).all(axis=1) & ended
    other = (tokens[:, :CAPTION_LENGTH] == other_true_caption(refs)).all(axis=1) & ended
    right["exact match"] += list(same)
    right["a true caption"] += list(same | other)
    right["digit pair"] += list((np.sort(tokens[:, [SUBJECT, OBJECT]], axis=1)
                                 == np.sort(refs[:, [SUBJECT, OBJECT]], axis=1)).all(axis=1))
    horizontal = lambda ids: np.isin(ids, [_LEFT, _RIGHT])
    right["layout"] += list(horizontal(tokens[:, RELATION]) == horizontal(refs[:, RELATION]))
    if config.model.attention:
      alpha = hybrids.caption_attention(model, variables, batch["image"][real], tokens)
      entropies.append(-(alpha * np.log(np.maximum(alpha, 1e-12))).sum(-1).ravel())
  print(f"{len(right['layout'])} test canvases, greedy")
  print(", ".join(f"{k} right: {np.mean(v):.3f}" for k, v in right.items()))
  if entropies:
    print(f"attention entropy per word: {np.concatenate(entropies).mean():.3f} nats "
          f"(uniform over {alpha.shape[-1]} locations: {np.log(alpha.shape[-1]):.3f})")


if __name__ == "__main__":
  app.run(main)
