"""Translation end to end through the one trainer, on real Multi30k."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnnrnn import train
from configs import multi30k_transformer
from tests.helpers import REPO, override, restore_state, shared_dataset


def tiny_config(data_dir, tokenizer_dir, **overrides):
  """A 1-layer d=32 transformer on Multi30k De->En (SentencePiece 500), 40 steps."""
  c = multi30k_transformer.get_config("small,sentencepiece")
  c.model = c.model.__class__(dict(name="transformer", num_layers=1, d_model=32, num_heads=2,
                                   mlp_dim=64, dropout_rate=0.0, share_embeddings=True))
  c.mesh = (("data", 1),)
  c.dataset.data_dir = data_dir
  c.dataset.manual_dir = shared_dataset("multi30k")
  c.dataset.tokenizer_dir = tokenizer_dir
  c.dataset.vocab_size = 500
  # Sentences cut to 24 ids and one padded length: one compilation of each step.
  c.dataset.max_length = 24
  c.dataset.bucket_width = 24
  c.batch_size = 64
  c.eval_batch_size = 512
  c.num_epochs = 0
  c.num_train_steps = 40
  c.optimizer.learning_rate = 3e-3
  c.task.max_decode_len = 24
  c.log_every_steps = 20
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 0
  c.checkpoint.async_save = False
  c.progress_bar = False
  return override(c, **overrides)


@pytest.fixture(scope="module")
def whole_run(data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("multi30k")
  c = tiny_config(data_dir, str(root / "tokenizers"))
  return c, root / "whole", train.train_and_evaluate(c, str(root / "whole"))


@pytest.mark.slow
def test_transformer_trains_and_reports_bleu(whole_run):
  _, workdir, result = whole_run
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_losses = [r["loss"] for r in records if r["split"] == "train"]
  assert train_losses[-1] < train_losses[0]  # Learns.
  test = records[-1]
  assert test["split"] == "test" and test["step"] == 40
  assert {"loss", "nll", "accuracy", "perplexity", "bleu", "bleu_tok"} <= set(test)
  assert 0.0 <= test["bleu"] <= 100.0 and 0.0 <= test["bleu_tok"] <= 100.0
  assert test["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
  assert result["bleu"] == test["bleu"]


@pytest.mark.slow
def test_seq2seq_trains_and_reports_bleu(data_dir, tmp_path):
  """The recurrent seq2seq (tutorial 3's BiGRU + Bahdanau, narrow) through the same task."""
  c = tiny_config(data_dir, str(tmp_path / "tokenizers"))
  c.model = c.model.__class__(dict(name="seq2seq", variant="ptseq2seq_bahdanau", embed_dim=16,
                                   hidden_size=32, dropout_rate=0.0))
  c.eval_every_steps = 20
  c.checkpoint.keep_best = True  # The lowest validation loss, the tutorials' selection.
  result = train.train_and_evaluate(c, str(tmp_path / "run"))
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train_losses = [r["loss"] for r in records if r["split"] == "train"]
  assert train_losses[-1] < 0.95 * train_losses[0]  # Learns.
  assert records[-1]["split"] == "test" and 0.0 <= result["bleu"] <= 100.0
  assert "bleu_tok" in result
  # The last step is validated too (the test split is another split), so the last
  # checkpoint competes for the best slot.
  evals = {r["step"]: r["nll"] for r in records if r["split"] == "eval"}
  assert sorted(evals) == [20, 40]
  best = [int(s) for s in os.listdir(tmp_path / "run" / "checkpoints" / "best") if s.isdigit()]
  assert len(best) == 1 and evals[best[0]] == min(evals.values()), (best, evals)


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(whole_run, tmp_path):
  config, whole, _ = whole_run
  parts = tmp_path / "parts"
  train.train_and_evaluate(override(config.copy_and_resolve_references(),
                                    num_train_steps=20), str(parts))
  train.train_and_evaluate(config, str(parts),  # Resumes at step 20.
                           allow_changes=["num_train_steps"])
  a, b = restore_state(whole, 40), restore_state(parts, 40)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_eight_devices_decode_and_count_every_sentence_once(whole_run, tmp_path):
  config, whole, _ = whole_run
  # In a subprocess: in-process 8-device steps can abort under load (see test_trainer).
  code = ("import json; from cnnrnn import train; from tests.train.test_translation import "
          f"tiny_config; c = tiny_config({config.dataset.data_dir!r}, "
          f"{config.dataset.tokenizer_dir!r}, mesh=(('data', -1),)); "
          f"print(json.dumps(train.train_and_evaluate(c, {str(tmp_path)!r})))")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 "
             "--xla_cpu_collective_call_terminate_timeout_seconds=600")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  eight = json.loads(proc.stdout.strip().splitlines()[-1])
  one = json.loads((whole / "metrics.jsonl").read_text().splitlines()[-1])
  assert eight["num_examples"] == one["num_examples"]  # Every target token of the split once.
  assert eight["loss"] == pytest.approx(one["loss"], rel=0.05)
  assert 0.0 <= eight["bleu"] <= 100.0 and "bleu_tok" in eight
