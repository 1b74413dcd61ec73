"""Greedy and beam-search decoding, shared by every decoder (transformer, seq2seq, captioner).

Both searches are batched, jittable and run in one `lax.while_loop` that stops as soon as
nothing can change the result. They work on a step function

    step_fn(state, tokens [N]) -> (log_probs [N, V], new_state)

where `state` is any pytree whose array leaves have leading dimension N (B for greedy,
B * K for beam search, which tiles the state K times and reorders it as beams are
selected). Scalar (0-d) leaves, such as a cache's write position shared by all rows, are
passed through untouched, and so are leaves the step function returns unchanged (they still
hold identical copies for all beams of a sentence).

## The decoder protocol

A Flax model decodes with `generate` when it has three methods, each called through
`model.apply(variables, ..., method=...)`:

  encode(inputs, **encode_kwargs) -> encoded
      `encoded` is a pytree whose array leaves have leading dimension B (e.g. the memory
      [B, S, D] and its mask [B, S]). For beam search it is tiled K times (rows b*K..b*K+K-1
      belong to sentence b) and then constant: it is the same for every beam of a sentence.
  init_cache(encoded, max_len) -> None
      creates the "cache" collection (called with `mutable=["cache"]`): everything the
      decoder carries from step to step (key/value buffers, an RNN's carry), leaves with
      leading dimension B or scalars. This is the search state: tiled and reordered with
      the beams.
  decode_step(encoded, tokens [N]) -> logits [N, V]
      the next-token logits given the previous tokens (BOS first), reading and updating the
      "cache" collection (called with `mutable=["cache"]`).

This is Flax's own convention for incremental decoding (`nn.MultiHeadDotProductAttention`
with `decode=True`); the model never sees beams.

## Conventions

Token ids default to cnnrnn's translation vocabulary: pad 0, bos 2, eos 3. Outputs hold the
generated tokens after BOS, EOS included, then pad. Beam search uses the GNMT length
penalty (Wu et al. 2016), as flax's WMT example does:

    score = log P(y) / ((5 + |y|) / 6) ** alpha,   |y| counting the EOS.

fairseq instead divides by |y| ** lenpen (|y| with the EOS too); alpha = 0 (and lenpen = 0)
rank by raw log-probability. Each step takes the top 2K of the K x V continuations (by raw
log-probability), so that K can stay alive however many end: the K best of them that do not
end with EOS are the next live beams, and those of the K best that end with EOS join the
finished ones, which are ranked by the penalised score. Counting an EOS only among the K
best is the classic algorithm and fairseq's; flax's WMT `decode.py` also finishes the EOS
continuations ranked K+1..2K. The loop stops when, for every batch item, the worst of K
finished scores beats the best live beam's log-probability divided by the penalty at
`max_len` (an upper bound on anything it can still reach, because alpha >= 0), or at
`max_len`. An item with no finished hypothesis by then returns its live beams (scored with
the `max_len` penalty); an item with fewer than K finished ones has `-inf` scores in the
empty slots (whose tokens mean nothing).

So beam_size=1 with alpha=0 is exactly greedy search.

Sharding: with a batch-sharded input, greedy search runs without gathering rows (only the
"all done" flag is reduced across devices). Beam search does too except for its top-k:
XLA's CPU TopK does not partition along the batch, so each step all-gathers the [B, K * V]
candidate scores (a copy between devices of one host; single-device runs are unaffected).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Any, Array], tuple[Array, Any]]

# The special token ids of every cnnrnn vocabulary (tokenisers, captions, decoders): the
# one definition, imported by `cnnrnn.data.tokenizers` and the models.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def length_penalty(length, alpha: float):
  """GNMT length penalty ((5 + length) / 6) ** alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _batch_size(state, bos) -> int:
  if jnp.ndim(bos):
    return jnp.shape(bos)[0]
  for leaf in jax.tree.leaves(state):
    if jnp.ndim(leaf):
      return jnp.shape(leaf)[0]
  raise ValueError("cannot infer the batch size: pass `bos` as a [B] array or give the state "
                   "an array leaf with a leading batch dimension")


def _start_tokens(bos, batch: int) -> Array:
  return jnp.broadcast_to(jnp.asarray(bos, jnp.int32), (batch,))


class _GreedyState(NamedTuple):
  step: Array
  last: Array  # [B] the previous token
  done: Array  # [B]
  tokens: Array  # [B, L]
  scores: Array  # [B]
  state: Any


def greedy_search(step_fn: StepFn, init_state, bos, max_len: int, eos_id: int = EOS_ID, *,
                  pad_id: int = PAD_ID) -> tuple[Array, Array]:
  """Picks the most probable token at each step until every row has emitted `eos_id`.

  Args:
    step_fn: (state, tokens [B]) -> (log_probs [B, V], state).
    init_state: pytree with leading dimension B (scalar leaves allowed).
    bos: the start token, an int or [B] ints.
    max_len: most tokens generated per row (EOS included).
    eos_id: end token.
    pad_id: written after a row's EOS.

  Returns:
    (tokens [B, max_len] int32, scores [B]: the summed log-probabilities, EOS included).
  """
  batch = _batch_size(init_state, bos)

  def body(s: _GreedyState) -> _GreedyState:
    log_probs, state = step_fn(s.state, s.last)
    token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [B]
    token_logp = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    token = jnp.where(s.done, pad_id, token)
    scores = s.scores + jnp.where(s.done, 0.0, token_logp.astype(jnp.float32))
    tokens = lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step))
    return _GreedyState(s.step + 1, token, s.done | (token == eos_id), tokens, scores, state)

  def cond(s: _GreedyState):
    return (s.step < max_len) & ~jnp.all(s.done)

  init = _GreedyState(jnp.array(0, jnp.int32), _start_tokens(bos, batch),
                      jnp.zeros((batch,), bool), jnp.full((batch, max_len), pad_id, jnp.int32),
                      jnp.zeros((batch,), jnp.float32), init_state)
  final = lax.while_loop(cond, body, init)
  return final.tokens, final.scores


def _tile_beams(tree, beam_size: int):
  """Leaves [B, ...] -> [B * K, ...], each row repeated K times (scalars unchanged)."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, beam_size, axis=0),
                      tree)


def _gather(x: Array, index: Array) -> Array:
  """x [B, K, ...], index [B, K'] -> x[b, index[b, k'], ...] [B, K', ...]."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def _gather_beams(tree, index: Array, batch: int, beam_size: int, previous):
  """Reorders flat [B * K, ...] leaves by beam index [B, K].

  Scalars are left as they are, and so is every leaf the step function returned unchanged
  (the same traced value as in `previous`, the state it was given): such a leaf still holds
  the K identical copies it was tiled into, so reordering it would only copy memory (e.g.
  a cross-attention's cached projection of the source).
  """
  def gather(x, before):
    if jnp.ndim(x) == 0 or x is before:
      return x
    y = _gather(x.reshape((batch, beam_size) + x.shape[1:]), index)
    return y.reshape((batch * beam_size,) + x.shape[1:])
  return jax.tree.map(gather, tree, previous)


class _BeamState(NamedTuple):
  step: Array
  last: Array  # [B, K] previous token of each live beam
  live_logp: Array  # [B, K] sorted, best first
  live_seqs: Array  # [B, K, L]
  fin_scores: Array  # [B, K] penalised, sorted, -inf where empty
  fin_seqs: Array  # [B, K, L]
  state: Any  # leaves [B * K, ...]


def beam_search(step_fn: StepFn, init_state, bos, max_len: int, eos_id: int = EOS_ID,
                beam_size: int = 4, alpha: float = 0.6, *,
                pad_id: int = PAD_ID) -> tuple[Array, Array]:
  """Beam search with the GNMT length penalty (conventions in the module docstring).

  Args:
    step_fn: (state, tokens [B * K]) -> (log_probs [B * K, V], state).
    init_state: pytree with leading dimension B (scalar leaves allowed); tiled K times.
    bos: the start token, an int or [B] ints.
    max_len: most tokens generated per hypothesis (EOS included).
    eos_id: end token.
    beam_size: K.
    alpha: length-penalty exponent (>= 0; 0 ranks by log-probability).
    pad_id: written after a hypothesis's EOS.

  Returns:
    (tokens [B, K, max_len] int32, scores [B, K]), best first.

  Raises:
    ValueError: beam_size < 1 or alpha < 0.

  Example (a "model" that always prefers token 3, the end token, then 4):

    >>> import jax.numpy as jnp
    >>> from cnnrnn import decode
    >>> log_probs = jnp.log(jnp.array([0.05, 0.05, 0.05, 0.6, 0.25]))  # V = 5
    >>> step = lambda state, tokens: (jnp.tile(log_probs, (tokens.shape[0], 1)), state)
    >>> tokens, scores = decode.beam_search(step, jnp.zeros((2,)), bos=2, max_len=3,
    ...                                     beam_size=2)
    >>> tokens.shape, tokens[0, 0].tolist()  # [B, K, max_len]; the best ends at once
    ((2, 2, 3), [3, 0, 0])
  """
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}")
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0 (the early stop relies on it), got {alpha}")
  batch, k = _batch_size(init_state, bos), beam_size
  neg_inf = jnp.array(-jnp.inf, jnp.float32)
  max_penalty = length_penalty(max_len, alpha)

  def body(s: _BeamState) -> _BeamState:
    log_probs, state = step_fn(s.state, s.last.reshape(batch * k))
    vocab = log_probs.shape[-1]
    log_probs = log_probs.astype(jnp.float32).reshape(batch, k, vocab)
    candidates = (s.live_logp[:, :, None] + log_probs).reshape(batch, k * vocab)
    top_logp, top_index = lax.top_k(candidates, 2 * k)  # [B, 2K]
    top_beam, top_token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    top_seqs = _gather(s.live_seqs, top_beam)  # [B, 2K, L]
    top_seqs = lax.dynamic_update_slice(top_seqs, top_token[:, :, None], (0, 0, s.step))
    is_eos = top_token == eos_id

    live_logp, live_index = lax.top_k(jnp.where(is_eos, neg_inf, top_logp), k)  # [B, K]
    live_seqs = _gather(top_seqs, live_index)
    last = _gather(top_token, live_index)
    state = _gather_beams(state, _gather(top_beam, live_index), batch, k, s.state)

    # Only an EOS among the K best continuations finishes (classic beam search, fairseq).
    finishes = is_eos & (jnp.arange(2 * k) < k)[None, :]
    fin_new = jnp.where(finishes, top_logp / length_penalty(s.step + 1, alpha), neg_inf)
    fin_scores, fin_index = lax.top_k(jnp.concatenate([s.fin_scores, fin_new], 1), k)
    fin_seqs = _gather(jnp.concatenate([s.fin_seqs, top_seqs], 1), fin_index)
    return _BeamState(s.step + 1, last, live_logp, live_seqs, fin_scores, fin_seqs, state)

  def cond(s: _BeamState):
    best_reachable = s.live_logp[:, 0] / max_penalty
    can_improve = jnp.any(best_reachable > s.fin_scores[:, k - 1])
    return (s.step < max_len) & can_improve

  seqs = jnp.full((batch, k, max_len), pad_id, jnp.int32)
  init = _BeamState(
      step=jnp.array(0, jnp.int32),
      last=jnp.broadcast_to(_start_tokens(bos, batch)[:, None], (batch, k)),
      # All K beams start identical: only the first may expand, or the top 2K would hold
      # K copies of each continuation.
      live_logp=jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, 0.0, neg_inf)[None], (batch, k)),
      live_seqs=seqs, fin_scores=jnp.full((batch, k), neg_inf), fin_seqs=seqs,
      state=_tile_beams(init_state, k))
  final = lax.while_loop(cond, body, init)
  none_finished = final.fin_scores[:, 0] == neg_inf  # [B]
  tokens = jnp.where(none_finished[:, None, None], final.live_seqs, final.fin_seqs)
  scores = jnp.where(none_finished[:, None], final.live_logp / max_penalty, final.fin_scores)
  return tokens, scores


def generate(model, variables, inputs, *, max_len: int, beam_size: int = 1, alpha: float = 0.6,
             bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = PAD_ID,
             **encode_kwargs) -> tuple[Array, Array]:
  """Decodes a batch with any model that follows the decoder protocol (module docstring).

  Jit it with the model and the sizes static, e.g.
  `jax.jit(functools.partial(generate, model, max_len=50, beam_size=4))(variables, src)`.

  Args:
    model: a Flax module with `encode`, `init_cache` and `decode_step`.
    variables: its variables ("params", ...; a "cache" entry is ignored).
    inputs: the first argument of `encode` (e.g. source token ids [B, S]).
    max_len: most tokens generated per sentence (EOS included).
    beam_size: 1 for greedy search, K > 1 for beam search.
    alpha: the beam's length-penalty exponent (unused by greedy search).
    bos_id: start token fed at the first step.
    eos_id: end token.
    pad_id: written after EOS.
    **encode_kwargs: more arguments of `encode` (e.g. src_lengths).

  Returns:
    (tokens [B, max_len] of the best hypothesis, scores [B]): greedy scores are summed
    log-probabilities, beam scores the length-penalised ones.

  Example (an untrained Transformer: the ids are arbitrary, the shapes are not):

    >>> import jax, jax.numpy as jnp
    >>> from cnnrnn import decode, models
    >>> model = models.create("transformer", vocab_size=20, num_layers=1, d_model=16,
    ...                       num_heads=2, mlp_dim=32)
    >>> src = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])  # [B, S], padding 0
    >>> lengths = jnp.array([3, 2])
    >>> variables = model.init(jax.random.key(0), src, src, src_lengths=lengths)
    >>> tokens, scores = decode.generate(model, variables, src, max_len=6, beam_size=3,
    ...                                  src_lengths=lengths)
    >>> tokens.shape, scores.shape
    ((2, 6), (2,))
  """
  variables = {name: v for name, v in variables.items() if name != "cache"}
  encoded = model.apply(variables, inputs, method="encode", **encode_kwargs)
  _, cache = model.apply(variables, encoded, max_len, method="init_cache", mutable=["cache"])
  batch = jax.tree.leaves(encoded)[0].shape[0]
  bos = jnp.full((batch,), bos_id, jnp.int32)
  # Every beam of a sentence shares its encoding: it is tiled once and stays out of the
  # search state, so it is not reordered at each step.
  if beam_size > 1:
    encoded = _tile_beams(encoded, beam_size)

  def step_fn(cache, tokens):
    logits, cache = model.apply({**variables, **cache}, encoded, tokens, method="decode_step",
                                mutable=["cache"])
    return jax.nn.log_softmax(logits.astype(jnp.float32)), cache

  if beam_size == 1:
    return greedy_search(step_fn, cache, bos, max_len, eos_id, pad_id=pad_id)
  tokens, scores = beam_search(step_fn, cache, bos, max_len, eos_id, beam_size, alpha,
                               pad_id=pad_id)
  return tokens[:, 0], scores[:, 0]
