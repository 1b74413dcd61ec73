"""Greedy and beam search on tiny step functions whose probabilities are known."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import decode

EOS, BOS, V = 3, 2, 5


def _table_step(tables):
  """A step function reading log_probs = tables[row, step, previous token] [N, V].

  The state is {"row": [N], "step": [N]}; each batch row may use its own table.
  """
  with np.errstate(divide="ignore"):
    tables = jnp.asarray(np.log(tables), jnp.float32)  # [R, L, V, V]

  def step_fn(state, tokens):
    log_probs = tables[state["row"], state["step"], tokens]
    return log_probs, {"row": state["row"], "step": state["step"] + 1}

  return step_fn


def _random_tables(rows, length, seed, eos_bias=0.0):
  p = np.random.default_rng(seed).gamma(0.5, size=(rows, length, V, V))
  p[..., 0] = 0.0  # pad is never generated
  p[..., EOS] += eos_bias
  return p / p.sum(-1, keepdims=True)


def _state(rows):
  return {"row": jnp.arange(rows), "step": jnp.zeros(rows, jnp.int32)}


def _brute_force(table, max_len, alpha):
  """All hypotheses of one row: finished ones (ending in EOS) sorted by penalised score."""
  out = []
  for n in range(1, max_len + 1):
    for body in itertools.product([t for t in range(1, V) if t != EOS], repeat=n - 1):
      seq, prev, logp = (*body, EOS), BOS, 0.0
      for t, tok in enumerate(seq):
        logp += np.log(table[t, prev, tok])
        prev = tok
      out.append((logp / ((5 + n) / 6) ** alpha, seq))
  return sorted(out, key=lambda s: -s[0])


def test_beam_of_one_equals_greedy():
  max_len, rows = 8, 6
  tables = _random_tables(rows, max_len, seed=0)
  tables[:, 4:, :, EOS] += 10.0  # ends by the fifth token at the latest
  step = _table_step(tables / tables.sum(-1, keepdims=True))
  greedy_tokens, greedy_scores = decode.greedy_search(step, _state(rows), BOS, max_len, EOS)
  tokens, scores = decode.beam_search(step, _state(rows), BOS, max_len, EOS, beam_size=1,
                                      alpha=0.0)
  np.testing.assert_array_equal(tokens[:, 0], greedy_tokens)
  np.testing.assert_allclose(scores[:, 0], greedy_scores, rtol=1e-6)
  assert np.any(greedy_tokens[:, 2] != 0)  # some rows run several steps


def test_beam_finds_the_best_sequence_where_greedy_does_not():
  table = np.zeros((1, 3, V, V))  # P(next | previous), the same at every step
  for prev, (p1, p4, p_eos) in {BOS: (0.5, 0.4, 0.1),  # greedy takes 1 ...
                                1: (0.3, 0.3, 0.4),  # ... then at best 0.5 * 0.4 = 0.2
                                4: (0.05, 0.05, 0.9)}.items():  # 4 EOS: 0.4 * 0.9 = 0.36
    table[0, :, prev, 1], table[0, :, prev, 4], table[0, :, prev, EOS] = p1, p4, p_eos
  step = _table_step(table)
  greedy, _ = decode.greedy_search(step, _state(1), BOS, 3, EOS)
  tokens, scores = decode.beam_search(step, _state(1), BOS, 3, EOS, beam_size=2, alpha=0.0)
  np.testing.assert_array_equal(greedy[0], [1, EOS, 0])
  np.testing.assert_array_equal(tokens[0, 0], [4, EOS, 0])
  np.testing.assert_allclose(scores[0, 0], np.log(0.36), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_is_exhaustive(alpha):
  """With K above the number of hypotheses, the K best equal brute-force enumeration."""
  # 1 + 3 + 9 = 13 finished hypotheses per row; K >= 9 * 4 keeps every continuation.
  max_len, rows, k = 3, 2, 40
  tables = _random_tables(rows, max_len, seed=1)
  tokens, scores = decode.beam_search(_table_step(tables), _state(rows), BOS, max_len, EOS,
                                       beam_size=k, alpha=alpha)
  for r in range(rows):
    want = _brute_force(tables[r], max_len, alpha)
    np.testing.assert_allclose(scores[r, :13], [s for s, _ in want], rtol=1e-5)
    for got, (_, seq) in zip(np.asarray(tokens[r]), want):
      np.testing.assert_array_equal(got[:len(seq)], seq)
      assert not np.any(got[len(seq):])
    assert np.all(np.isneginf(scores[r, 13:]))


def test_early_stop_and_live_fallback():
  calls = []

  def counting(step_fn):
    def wrapped(state, tokens):
      jax.debug.callback(lambda: calls.append(1))
      return step_fn(state, tokens)
    return wrapped

  max_len = 10
  tables = _random_tables(1, max_len, seed=2)
  tables[..., EOS] = 100.0  # every hypothesis ends at once: nothing can beat them later
  tables /= tables.sum(-1, keepdims=True)
  tokens, _ = decode.beam_search(counting(_table_step(tables)), _state(1), BOS, max_len, EOS,
                                 beam_size=2, alpha=0.6)
  assert len(calls) == 2 and tokens[0, 0, 0] == EOS
  calls.clear()
  greedy, _ = decode.greedy_search(counting(_table_step(tables)), _state(1), BOS, max_len, EOS)
  assert len(calls) == 1 and greedy[0, 0] == EOS
  # Nothing ever finishes: the live beams come back, best first.
  tables[..., EOS] = 0.0
  tokens, scores = decode.beam_search(_table_step(tables), _state(1), BOS, 4, EOS, beam_size=3)
  assert not np.any(tokens == EOS) and np.all(tokens != 0)
  assert np.all(np.diff(np.asarray(scores[0])) <= 0) and np.all(np.isfinite(scores))


@pytest.mark.slow
def test_batch_items_are_independent_and_jit_matches():
  max_len, rows = 5, 3
  tables = _random_tables(rows, max_len, seed=3, eos_bias=0.3)
  search = functools.partial(decode.beam_search, beam_size=3, alpha=0.6)
  tokens, scores = search(_table_step(tables), _state(rows), BOS, max_len, EOS)
  for r in range(rows):
    t1, s1 = search(_table_step(tables[r:r + 1]), _state(1), BOS, max_len, EOS)
    np.testing.assert_array_equal(t1[0], tokens[r])
    np.testing.assert_allclose(s1[0], scores[r], rtol=1e-6)
  jitted = jax.jit(lambda state: search(_table_step(tables), state, BOS, max_len, EOS))
  t2, s2 = jitted(_state(rows))
  np.testing.assert_array_equal(t2, tokens)
  np.testing.assert_allclose(s2, scores, rtol=1e-6)


def test_bad_arguments_raise():
  step = _table_step(_random_tables(1, 2, seed=0))
  with pytest.raises(ValueError, match="beam_size"):
    decode.beam_search(step, _state(1), BOS, 2, EOS, beam_size=0)
  with pytest.raises(ValueError, match="alpha"):
    decode.beam_search(step, _state(1), BOS, 2, EOS, alpha=-1.0)


def test_leaves_the_step_leaves_unchanged_are_not_reordered(monkeypatch):
  """A leaf returned as given (e.g. a cached projection of the source) keeps its tiled
  copies instead of being gathered at every step; the result is unchanged."""
  tables = _random_tables(2, 4, seed=4, eos_bias=0.3)
  table_step = _table_step(tables)

  def step_fn(state, tokens):
    log_probs, inner = table_step(state["inner"], tokens)
    return log_probs + 0.0 * state["const"][:, :1], {"inner": inner, "const": state["const"]}

  state = {"inner": _state(2), "const": jnp.ones((2, 7))}
  want = decode.beam_search(table_step, _state(2), BOS, 4, EOS, beam_size=3)
  gathered = []
  original = decode._gather  # pylint: disable=protected-access
  monkeypatch.setattr(decode, "_gather", lambda x, i: gathered.append(x.shape) or original(x, i))
  got = decode.beam_search(step_fn, state, BOS, 4, EOS, beam_size=3)
  assert (2, 3, 7) not in gathered and (2, 3) in gathered  # "step" is gathered, "const" not
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
