"""Language models in the trainer: the carry from batch to batch, resets, gradient
accumulation, exact resume, metrics over every token, and the PTB/char-RNN configs."""

import json
import math
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnrnn import data
from cnnrnn import models
from cnnrnn import sample
from cnnrnn import tasks
from cnnrnn import train
from cnnrnn.data import text
from cnnrnn.train import optim
from cnnrnn.train import steps
from cnnrnn.train.state import TrainState
from configs import char_rnn_shakespeare, ptb_lstm
from tests.helpers import cli, override, restore_state, shared_dataset

ONE_DEVICE = (("data", 1),)


def _lm_state(model, tx, batch_size, seq_len=5, seed=0):
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, seq_len), jnp.int32))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                    opt_state=tx.init(params), rng=jax.random.PRNGKey(1),
                    carry=model.zero_carry(batch_size))


def _batch(tokens, reset):
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "reset": np.asarray(reset)}


@pytest.mark.slow
def test_carry_continues_the_streams_and_resets():
  model = models.create("rnn_lm", vocab_size=11, hidden_size=8, num_layers=2, cell="lstm")
  task = tasks.create("language_model")
  tx = optax.sgd(0.0)  # Parameters stay put: only the carry moves.
  step = jax.jit(steps.make_train_step(model, task, tx))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (3, 11), 0, 11)
  state = _lm_state(model, tx, 3)
  state, _ = step(state, _batch(tokens[:, :6], [True] * 3))
  state, _ = step(state, _batch(tokens[:, 5:], [False] * 3))
  whole, _ = model.apply({"params": state.params}, tokens[:, :10])
  for got, want in zip(jax.tree.leaves(state.carry), jax.tree.leaves(whole)):
    np.testing.assert_allclose(got, want, atol=1e-6)
  # A reset row starts again from zeros; the other rows carry on.
  state2, _ = step(state, _batch(tokens[:, 5:], [True, False, False]))
  fresh, _ = model.apply({"params": state.params}, tokens[:1, 5:10])
  cont, _ = model.apply({"params": state.params}, tokens[1:, 5:10], carry=jax.tree.map(
      lambda c: c[1:], state.carry))
  for got, want0, want1 in zip(*map(jax.tree.leaves, (state2.carry, fresh, cont))):
    np.testing.assert_allclose(got[:1], want0, atol=1e-6)
    np.testing.assert_allclose(got[1:], want1, atol=1e-6)


@pytest.mark.slow
def test_eval_step_threads_the_carry():
  model = models.create("rnn_lm", vocab_size=11, hidden_size=8, num_layers=1, cell="gru")
  task = tasks.create("language_model")
  state = _lm_state(model, optax.sgd(0.1), 2)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 9), 0, 11)
  eval_step = jax.jit(steps.make_eval_step(model, task))
  m1, carry = eval_step(state, _batch(tokens[:, :5], [True, True]), model.zero_carry(2))
  m2, carry = eval_step(state, _batch(tokens[:, 4:], [False, False]), carry)
  _, logits = model.apply({"params": state.params}, tokens[:, :8])
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  np.testing.assert_allclose(m1["loss"] + m2["loss"], nll.sum(), rtol=1e-5)
  assert m1["count"] + m2["count"] == 16


@pytest.mark.slow
def test_gradient_accumulation_splits_the_carry_with_the_rows():
  model = models.create("rnn_lm", vocab_size=13, hidden_size=8, num_layers=1, cell="lstm")
  task = tasks.create("language_model")
  tx = optax.sgd(0.5)
  tokens = jax.random.randint(jax.random.PRNGKey(4), (4, 13), 0, 13)
  results = []
  for k in (1, 2):
    step = jax.jit(steps.make_train_step(model, task, tx, grad_accum_steps=k))
    state = _lm_state(model, tx, 4)
    for j in range(2):
      state, metrics = step(state, _batch(tokens[:, 6 * j:6 * j + 7], [j == 0] * 4))
    results.append((state, metrics))
  (a, ma), (b, mb) = results
  for x, y in zip(jax.tree.leaves((a.params, a.carry)), jax.tree.leaves((b.params, b.carry))):
    np.testing.assert_allclose(x, y, atol=2e-6)
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)


def _char_config(data_dir, **overrides):
  c = char_rnn_shakespeare.get_config()
  c.mesh = ONE_DEVICE
  c.dataset.data_dir = data_dir
  c.dataset.manual_dir = shared_dataset("tinyshakespeare")
  c.model.hidden_size = 32
  c.model.num_layers = 2
  c.model.dropout = 0.1
  c.dataset.seq_len = 16
  c.batch_size = 8
  c.eval_batch_size = 40
  c.num_train_steps = 6
  c.optimizer.schedule = "constant"
  c.log_every_steps = 3
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 3
  c.checkpoint.async_save = False
  c.progress_bar = False
  return override(c, **overrides)


@pytest.mark.slow
def test_char_lm_learns_and_evaluates_every_character(data_dir, tmp_path):
  metrics = train.train_and_evaluate(
      _char_config(data_dir, num_train_steps=40, **{"optimizer.learning_rate": 1e-2}), str(tmp_path))
  assert metrics["num_examples"] == 55_770 - 1  # Every test character but the first is a target.
  assert math.isclose(metrics["perplexity"], math.exp(metrics["loss"]), rel_tol=1e-9)
  assert math.isclose(metrics["bits_per_token"], metrics["loss"] / math.log(2), rel_tol=1e-9)
  assert metrics["loss"] < 3.3  # Uniform over 65 characters: 4.17 nats.

  model, variables, vocab = sample.load_language_model(str(tmp_path))
  assert len(vocab) == 65
  texts = sample.generate(model, variables, vocab, "ROMEO:", length=30, temperature=0.8,
                          num_samples=2, seed=3)
  assert [len(t) for t in texts] == [36, 36] and all(t.startswith("ROMEO:") for t in texts)
  assert texts[0] != texts[1]
  assert sample.generate(model, variables, vocab, "ROMEO:", length=30, temperature=0.8,
                         num_samples=2, seed=3) == texts
  with pytest.raises(ValueError, match="allowed: latest, best or one of the steps"):
    sample.load_language_model(str(tmp_path), "7")


@pytest.mark.slow
def test_resumed_lm_run_equals_an_uninterrupted_one(data_dir, tmp_path):
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  train.train_and_evaluate(_char_config(data_dir), str(whole))
  train.train_and_evaluate(_char_config(data_dir, num_train_steps=3), str(parts))
  train.train_and_evaluate(_char_config(data_dir), str(parts),  # Resumes at step 3.
                           allow_changes=["num_train_steps"])
  a, b = restore_state(whole, 6), restore_state(parts, 6)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert any(np.abs(x).sum() > 0 for x in jax.tree.leaves(a["carry"]))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("field,value,match", [
    ("dataset.seq_len", None, r"dataset.seq_len=None; a language model needs"),
    ("model.vocab_size", 64, r"model.vocab_size=64 but dataset 'tiny_shakespeare' has 65 tokens"),
    ("dataset.eval_split", "valid", r"has no split 'valid'; its splits: \['test', 'train', 'validation'\]"),
])
def test_lm_config_errors_name_the_field(data_dir, tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(_char_config(data_dir, **{field: value}), str(tmp_path))


@pytest.mark.slow
def test_ptb_config_epochs_and_zaremba_schedule(data_dir):
  corpus = text.load_corpus(data.load("ptb", data_dir, shared_dataset("ptb")))
  assert len(corpus.split("train")) == ptb_lstm.PTB_TRAIN_TOKENS
  for size in ptb_lstm.SIZES:
    c = ptb_lstm.get_config(size)
    batches = text.LanguageModelBatches(corpus.split("train"), global_batch_size=c.batch_size,
                                        seq_len=c.dataset.seq_len, train=True)
    per_epoch = ptb_lstm.steps_per_epoch(c.dataset.seq_len)
    assert len(batches) == per_epoch == c.eval_every_steps
    schedule = optim.make_schedule(c.optimizer, c.num_epochs * per_epoch)
    _, _, _, _, _, epochs, begin, decay = ptb_lstm.SIZES[size]
    for epoch in (0, begin - 1, begin, begin + 1, epochs - 1):  # Zaremba: decay ** max(i + 1 - begin, 0).
      for step in (epoch * per_epoch, (epoch + 1) * per_epoch - 1):
        np.testing.assert_allclose(schedule(step), decay ** max(epoch + 1 - begin, 0), rtol=1e-5)
  with pytest.raises(ValueError, match="allowed sizes: small, medium, large"):
    ptb_lstm.get_config("tiny")


def _lm_cli(workdir, data_dir, devices, *flags):
  return cli("configs/char_rnn_shakespeare.py", workdir, data_dir, devices,
             f"--config.dataset.manual_dir={shared_dataset('tinyshakespeare')}",
             "--config.model.hidden_size=16", "--config.dataset.seq_len=12",
             "--config.batch_size=8", "--config.eval_batch_size=16", "--config.num_train_steps=8",
             "--config.eval_every_steps=0", "--config.checkpoint_every_steps=8",
             "--config.optimizer.name=momentum", "--config.optimizer.learning_rate=0.5",
             "--config.optimizer.schedule=constant", *flags)


def _test_record(workdir):
  records = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [r for r in records if r["split"] == "test"]


@pytest.mark.slow
def test_lm_on_eight_devices_and_two_processes_matches_one_device(data_dir, tmp_path):
  """The carry's rows are split over devices and processes like the batch's; training
  and the stream-wise evaluation give what one device gives."""
  import portpicker  # pylint: disable=g-import-not-at-top

  for devices in (1, 8):
    cmd, kw = _lm_cli(tmp_path / f"d{devices}", data_dir, devices)
    proc = subprocess.run(cmd, **kw)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
  port = portpicker.pick_unused_port()
  procs = []
  for i in range(2):
    cmd, kw = _lm_cli(tmp_path / "p2", data_dir, 1, f"--coordinator_address=localhost:{port}",
                      "--num_processes=2", f"--process_id={i}")
    procs.append(subprocess.Popen(cmd, **kw))
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()[-3000:]

  one = restore_state(tmp_path / "d1", 8)
  for other in ("d8", "p2"):
    state = restore_state(tmp_path / other, 8)
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(one["params"]),
                                 jax.tree_util.tree_leaves_with_path(state["params"])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"{other}{jax.tree_util.keystr(path)}")
    for a, b in zip(jax.tree.leaves(one["carry"]), jax.tree.leaves(state["carry"])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"{other} carry")
    (ref,), (got,) = _test_record(tmp_path / "d1"), _test_record(tmp_path / other)
    assert got["num_examples"] == ref["num_examples"] == 55_769
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-4)
