"""The translation task: loss and metrics with padding masked, and BLEU as sacreBLEU's."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from cnnrnn import tasks
from cnnrnn.data import tokenizers
from cnnrnn.tasks import translation


def _batch(rng, b=4, t=7, v=11):
  lengths = rng.integers(1, t + 1, b)
  tgt_out = rng.integers(4, v, (b, t))
  tgt_out[np.arange(t)[None] >= lengths[:, None]] = 0
  return {"tgt_out": jnp.asarray(tgt_out, jnp.int32),
          "tgt_lengths": jnp.asarray(lengths, jnp.int32),
          "mask": jnp.asarray([1, 1, 1, 0], jnp.float32)}


@pytest.mark.slow
def test_loss_matches_a_direct_computation_with_label_smoothing():
  rng = np.random.default_rng(0)
  batch = _batch(rng)
  logits = jnp.asarray(rng.normal(size=(4, 7, 11)), jnp.float32)
  task = tasks.create("translation", label_smoothing=0.1)
  loss, m = task.loss_and_metrics(logits, batch)
  log_p = np.asarray(jax.nn.log_softmax(logits))
  expected_loss = expected_nll = correct = count = 0.0
  for i in range(3):  # Row 3 is padding.
    for j in range(int(batch["tgt_lengths"][i])):
      y = int(batch["tgt_out"][i, j])
      target = np.full(11, 0.1 / 11)
      target[y] += 0.9
      expected_loss -= (target * log_p[i, j]).sum()
      expected_nll -= log_p[i, j, y]
      correct += log_p[i, j].argmax() == y
      count += 1
  np.testing.assert_allclose(float(m["loss"]), expected_loss, rtol=1e-5)
  np.testing.assert_allclose(float(m["nll"]), expected_nll, rtol=1e-5)
  assert float(m["accuracy"]) == correct and float(m["count"]) == count
  np.testing.assert_allclose(float(loss), expected_loss / count, rtol=1e-5)
  assert task.derived_metrics({"nll": 2.0}) == {"perplexity": math.exp(2.0)}


@pytest.mark.slow
def test_padding_positions_and_rows_change_nothing():
  rng = np.random.default_rng(1)
  batch = _batch(rng)
  logits = rng.normal(size=(4, 7, 11)).astype(np.float32)
  task = tasks.create("translation", label_smoothing=0.1)
  loss, metrics = task.loss_and_metrics(jnp.asarray(logits), batch)
  grad = jax.grad(lambda l: task.loss_and_metrics(l, batch)[0])(jnp.asarray(logits))
  pad = np.arange(7)[None] >= np.asarray(batch["tgt_lengths"])[:, None]
  pad[3] = True  # The padding row.
  changed = logits.copy()
  changed[pad] = rng.normal(size=(pad.sum(), 11)) * 10
  tgt = np.asarray(batch["tgt_out"]).copy()
  tgt[pad] = 7
  loss2, metrics2 = task.loss_and_metrics(jnp.asarray(changed),
                                          dict(batch, tgt_out=jnp.asarray(tgt)))
  assert float(loss2) == float(loss)
  for k in metrics:
    assert float(metrics2[k]) == float(metrics[k])
  assert not np.asarray(grad)[pad].any()


def test_without_smoothing_loss_is_the_nll():
  rng = np.random.default_rng(2)
  batch = _batch(rng)
  logits = jnp.asarray(rng.normal(size=(4, 7, 11)), jnp.float32)
  _, m = tasks.create("translation").loss_and_metrics(logits, batch)
  assert float(m["loss"]) == float(m["nll"])


@pytest.mark.parametrize("field,value", [("label_smoothing", 1.0), ("beam_size", 0),
                                         ("max_decode_len", 0), ("length_penalty", -1.0)])
def test_bad_fields_are_named(field, value):
  with pytest.raises(ValueError, match=f"task.{field}="):
    tasks.create("translation", **{field: value})


def test_batches_without_pairs_say_which_fields_to_set():
  with pytest.raises(ValueError, match="set dataset.source_lang and dataset.target_lang"):
    tasks.create("translation").model_inputs({"image": np.zeros((1, 8, 8, 1)), "label": [0]})


HYPS = ["The cat sat on the mat.", "A dog runs in the park!", "two men, outside."]
REFS = ["The cat is sitting on the mat.", "A dog is running in the park.", "Two men outside."]


def test_bleu_is_sacrebleus_corpus_bleu():
  score, signature = translation.corpus_bleu(HYPS, REFS)
  assert score.score == sacrebleu.corpus_bleu(HYPS, [REFS]).score
  assert 0 < score.score < 100
  assert translation.corpus_bleu(REFS, REFS)[0].score == pytest.approx(100.0)
  assert signature == ("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|"
                       f"version:{sacrebleu.__version__}")


class _WordTokenizer:
  """A stand-in for MosesWords over a fixed word list (ids 4...)."""

  def __init__(self, words):
    self.words = list(tokenizers.SPECIAL_TOKENS) + words

  def ids(self, sentence):
    return np.array([self.words.index(w) for w in sentence.split()] + [tokenizers.EOS_ID, 0, 5])

  def decode(self, ids):
    return " ".join(self.words[i] for i in tokenizers.content_ids(ids))

  def bleu_tokens(self, ids):
    return self.decode(ids).lower()

  def reference_tokens(self, sentence):
    return " ".join(tokenizers.moses_tokens(sentence, "en"))


def test_translation_metrics_detokenised_and_tokenised_bleu():
  refs = ["Two young, White males are outside.", "A man's hat."]
  hyps = ["Two young , white males are outside .", "a man 's hat ."]
  tok = _WordTokenizer(sorted({w for h in hyps for w in h.split()}))
  m = translation.translation_metrics([tok.ids(h) for h in hyps], refs, tok)
  assert m["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
  hyp_tok = ["two young , white males are outside .", "a man 's hat ."]
  ref_tok = ["two young , white males are outside .", "a man &apos;s hat ."]
  assert m["bleu_tok"] == sacrebleu.corpus_bleu(hyp_tok, [ref_tok], tokenize="none").score
  assert 0 < m["bleu_tok"] < 100 and m["bleu_signature"].startswith("nrefs:1|case:mixed")


def test_word_models_score_bleu_tok_on_their_own_tokens(tmp_path):
  # The same translations score differently on Moses and on spaCy tokens ("t-shirt" is one
  # Moses token, three spaCy tokens); each word model is scored on its own.
  refs = ["A man in a red t-shirt.", "Two dogs play in the snow."]
  text = {"de": ["x"], "en": refs + ["A man in a blue t-shirt."]}
  hyps = ["A man in a blue t-shirt.", "Two dogs play in snow."]
  for name, words in (("moses_words", tokenizers.moses_tokens),
                      ("spacy_words", tokenizers.spacy_tokens)):
    config = tokenizers.TokenizerConfig(tokenizer=name, vocab_size=0, min_frequency=1,
                                        shared_vocab=False)
    _, tok = tokenizers.build_tokenizers(config, text, "de", "en", str(tmp_path))
    m = translation.translation_metrics([tok.encode(h) for h in hyps], refs, tok)
    expected = sacrebleu.corpus_bleu([" ".join(words(h, "en")) for h in hyps],
                                     [[" ".join(words(r, "en")) for r in refs]], tokenize="none")
    assert m["bleu_tok"] == pytest.approx(expected.score), name
  assert tokenizers.moses_tokens(hyps[0], "en")[-2] == "t-shirt"
  assert tokenizers.spacy_tokens(hyps[0], "en")[-4:-1] == ["t", "-", "shirt"]
