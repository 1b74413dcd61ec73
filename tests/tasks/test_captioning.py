"""The captioning task: targets, the doubly stochastic regulariser, exact match and BLEU."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sacrebleu

from cnnrnn import tasks
from cnnrnn.tasks.captioning import caption_metrics

CAPTIONS = jnp.array([[5, 6, 7], [8, 9, 0]])  # the second is one token shorter


def test_targets_add_bos_and_eos():
  tgt_in, tgt_out, weights = tasks.create("captioning").targets(CAPTIONS)
  np.testing.assert_array_equal(tgt_in, [[2, 5, 6, 7], [2, 8, 9, 0]])
  np.testing.assert_array_equal(tgt_out, [[5, 6, 7, 3], [8, 9, 3, 0]])
  np.testing.assert_array_equal(weights, [[1, 1, 1, 1], [1, 1, 1, 0]])


@pytest.mark.slow
def test_loss_is_cross_entropy_plus_the_attention_regulariser():
  task = tasks.create("captioning", attention_penalty=0.5)
  logits = jax.random.normal(jax.random.key(0), (2, 4, 10))
  alpha = jax.nn.softmax(jax.random.normal(jax.random.key(1), (2, 4, 6)))
  batch = {"image": None, "caption": CAPTIONS, "mask": jnp.array([1.0, 1.0])}
  loss, metrics = task.loss_and_metrics((logits, alpha), batch)
  _, tgt_out, w = task.targets(CAPTIONS)
  ce = (optax.softmax_cross_entropy_with_integer_labels(logits, tgt_out) * w).sum()
  # By hand: sum over locations of (1 - attention received over the caption's real steps)^2.
  penalty = sum(((1 - np.asarray(alpha[b, :n]).sum(0)) ** 2).sum() for b, n in ((0, 4), (1, 3)))
  np.testing.assert_allclose(metrics["attention_penalty"], penalty, rtol=1e-5)
  np.testing.assert_allclose(loss, (ce + 0.5 * penalty) / 7, rtol=1e-5)
  assert metrics["count"] == 7
  # A padding row (mask 0) weighs nothing; without attention there is no penalty.
  _, m = task.loss_and_metrics((logits, alpha), dict(batch, mask=jnp.array([1.0, 0.0])))
  assert m["count"] == 4
  assert tasks.create("captioning").loss_and_metrics((logits, None), batch)[1][
      "attention_penalty"] == 0


def test_exact_match_and_bleu():
  refs = [np.array([5, 6, 7, 8, 9, 0]), np.array([5, 6, 7, 8, 0, 0])]
  hyps = [np.array([5, 6, 7, 8, 9, 3]), np.array([5, 6, 7, 9, 3, 0])]
  m = caption_metrics(hyps, refs)
  assert m["exact_match"] == 0.5
  expected = sacrebleu.corpus_bleu(["a b c d e", "a b c e"], [["a b c d e", "a b c d"]],
                                   tokenize="none").score
  assert m["bleu"] == pytest.approx(expected)
  assert caption_metrics(refs, refs) == {"exact_match": 1.0, "bleu": pytest.approx(100.0)}


def test_bad_fields_are_named():
  with pytest.raises(ValueError, match="task.attention_penalty=-1"):
    tasks.create("captioning", attention_penalty=-1)
  with pytest.raises(ValueError, match="task.beam_size=0"):
    tasks.create("captioning", beam_size=0)
  with pytest.raises(ValueError, match="needs batches with 'caption'"):
    tasks.create("captioning").model_inputs({"image": 0, "label": 1})
