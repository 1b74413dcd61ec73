"""configs/multi30k_seq2seq.py: every variant builds its model, which runs forward (the
configs validate in tests/configs/test_configs.py)."""

import jax
import jax.numpy as jnp
import pytest

from cnnrnn import models
from configs import multi30k_seq2seq

EXPECTED = {  # variant -> (cell, layers, bidirectional, attention)
    "ptseq2seq_lstm": ("lstm", 2, False, "none"),
    "ptseq2seq_gru_context": ("gru", 1, False, "context"),
    "ptseq2seq_bahdanau": ("gru", 1, True, "bahdanau"),
    "luong": ("lstm", 2, False, "luong"),
}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
@pytest.mark.slow
def test_variant_builds_and_runs_forward(variant):
  c = multi30k_seq2seq.get_config(variant)
  assert (c.dataset.name, c.dataset.source_lang, c.dataset.target_lang) == ("multi30k", "de", "en")
  assert (c.dataset.tokenizer, c.dataset.min_frequency, c.task.name) == (
      "moses_words", 2, "translation")
  kwargs = {k: v for k, v in c.model.items() if k != "name"}
  # The data fills in the vocabulary sizes (`model_defaults`); small ones here.
  model = models.create(c.model.name, **kwargs, vocab_size=30, tgt_vocab_size=20)
  assert (model.cell, model.num_layers, model.bidirectional, model.attention) == EXPECTED[variant]
  assert (model.embed_dim, model.hidden_size, model.dropout_rate) == (256, 512, 0.5)
  model = model.clone(embed_dim=4, hidden_size=6)  # Same code paths, quicker.
  src = jnp.array([[5, 6, 7, 8], [9, 10, 0, 0]])
  tgt = jnp.array([[2, 4, 5], [2, 6, 0]])
  variables = jax.jit(model.init)(jax.random.key(0), src, tgt)
  logits = jax.jit(lambda v: model.apply(v, src, tgt, train=True,
                                         rngs={"dropout": jax.random.key(1)}))(variables)
  assert logits.shape == (2, 3, 20) and bool(jnp.isfinite(logits).all())


def test_widths_are_overridable_fields():
  c = multi30k_seq2seq.get_config("ptseq2seq_bahdanau")
  c.model.hidden_size, c.model.embed_dim = 256, 128
  kwargs = {k: v for k, v in c.model.items() if k != "name"}
  model = models.create(c.model.name, **kwargs, vocab_size=30, tgt_vocab_size=20)
  assert (model.embed_dim, model.hidden_size, model.attention) == (128, 256, "bahdanau")


def test_unknown_variant():
  with pytest.raises(ValueError, match="allowed: ptseq2seq_lstm, ptseq2seq_gru_context"):
    multi30k_seq2seq.get_config("sutskever_big")
