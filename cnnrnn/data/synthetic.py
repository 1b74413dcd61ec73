"""Synthetic long-range-dependency tasks, generated deterministically from a seed.

Plain numpy; each function returns a dict of arrays. The same (arguments, seed) always
gives the same arrays, so train and test sets are just two seeds.

- `adding_problem` (Hochreiter & Schmidhuber 1997; the form of Le, Jaitly & Hinton 2015):
  regression, [N, T, 2] floats -> [N, 1].
- `copy_task` (Hochreiter & Schmidhuber 1997; the form of Arjovsky, Shah & Bengio 2016):
  many-to-many classification over token ids.
- `temporal_order` (Hochreiter & Schmidhuber 1997, experiments 6a/6b): many-to-one
  classification over variable-length token sequences.
"""

import numpy as np

from cnnrnn.data.options import Option

# Token ids of `temporal_order`: noise symbols a-d, the relevant X/Y, begin/end markers.
TEMPORAL_ORDER_SYMBOLS = ("a", "b", "c", "d", "X", "Y", "B", "E")
_X, _Y, _B, _E = 4, 5, 6, 7

# Relative windows of the relevant symbols in H&S 1997 (for length 100: t1 in [10, 20],
# t2 in [50, 60]; with three: [10, 20], [33, 43], [66, 76]).
_ORDER_WINDOWS = {2: ((0.10, 0.20), (0.50, 0.60)),
                  3: ((0.10, 0.20), (0.33, 0.43), (0.66, 0.76))}


def _check_positive(**values):
  for name, v in values.items():
    if v < 1:
      raise ValueError(f"{name} must be >= 1, got {v}")


def adding_problem(num_examples: int, seq_len: int, *, seed: int) -> dict[str, np.ndarray]:
  """The adding problem.

  Channel 0 holds values U[0, 1]; channel 1 is zero except for exactly two markers (1.0),
  one in each half of the sequence. The target is the sum of the two marked values.
  Predicting the mean 1.0 gives MSE Var(u1 + u2) = 2/12 ~ 0.167, the baseline a model
  must beat.

  Args:
    num_examples: N.
    seq_len: T (>= 2).
    seed: generator seed.

  Returns:
    {"inputs": [N, T, 2] float32, "targets": [N, 1] float32}.

  Raises:
    ValueError: N < 1 or T < 2.
  """
  _check_positive(num_examples=num_examples)
  if seq_len < 2:
    raise ValueError(f"seq_len must be >= 2, got {seq_len}")
  rng = np.random.default_rng(seed)
  values = rng.uniform(0.0, 1.0, (num_examples, seq_len)).astype(np.float32)
  half = seq_len // 2
  first = rng.integers(0, half, num_examples)
  second = rng.integers(half, seq_len, num_examples)
  markers = np.zeros((num_examples, seq_len), np.float32)
  rows = np.arange(num_examples)
  markers[rows, first] = 1.0
  markers[rows, second] = 1.0
  targets = values[rows, first] + values[rows, second]
  return {"inputs": np.stack([values, markers], axis=-1),  # [N, T, 2]
          "targets": targets[:, None].astype(np.float32)}  # [N, 1]


def copy_task(num_examples: int, delay: int, *, copy_length: int = 10, num_symbols: int = 8,
              seed: int) -> dict[str, np.ndarray]:
  """The copy task: remember a sequence of symbols over a delay, then reproduce it.

  Token ids: 0 blank, 1..num_symbols data, num_symbols + 1 the delimiter ("now copy").
  The input is the copy_length data symbols, delay - 1 blanks, the delimiter, and
  copy_length blanks; the target is blanks except for the data symbols in the last
  copy_length steps. Total length T = delay + 2 * copy_length. A model that outputs
  blanks and then guesses uniformly has cross-entropy
  copy_length * log(num_symbols) / T per step (the memoryless baseline).

  Args:
    num_examples: N.
    delay: steps between the end of the data and the end of the delimiter (>= 1).
    copy_length: number of symbols to copy.
    num_symbols: size of the data alphabet.
    seed: generator seed.

  Returns:
    {"inputs": [N, T] int32 ids in [0, num_symbols + 1],
     "targets": [N, T] int32 ids in [0, num_symbols]}.
    Models need vocab_size = num_symbols + 2 and num_outputs = num_symbols + 1.

  Raises:
    ValueError: a size below 1.
  """
  _check_positive(num_examples=num_examples, delay=delay, copy_length=copy_length,
                  num_symbols=num_symbols)
  rng = np.random.default_rng(seed)
  length = delay + 2 * copy_length
  data = rng.integers(1, num_symbols + 1, (num_examples, copy_length), dtype=np.int32)
  inputs = np.zeros((num_examples, length), np.int32)
  inputs[:, :copy_length] = data
  inputs[:, copy_length + delay - 1] = num_symbols + 1
  targets = np.zeros((num_examples, length), np.int32)
  targets[:, -copy_length:] = data
  return {"inputs": inputs, "targets": targets}


def temporal_order(num_examples: int, seq_len: int = 100, *, num_relevant: int = 2,
                   seed: int) -> dict[str, np.ndarray]:
  """The temporal-order task: classify the order of X/Y symbols hidden among noise.

  Each sequence has a length drawn uniformly from [seq_len, seq_len + seq_len // 10]
  (100-110 in the paper). It starts with B, ends with E, and is otherwise noise from
  {a, b, c, d} except for num_relevant symbols, each X or Y, at random positions in
  fixed windows (for length 100: [10, 20] and [50, 60]; with three: [10, 20], [33, 43],
  [66, 76]). The class is the X/Y pattern read as a binary number, X = 0 and Y = 1,
  first symbol most significant: XX=0, XY=1, YX=2, YY=3 (2**num_relevant classes).
  Ids are `TEMPORAL_ORDER_SYMBOLS` indices; steps past an example's length hold 0.

  Args:
    num_examples: N.
    seq_len: the minimum length (>= 20).
    num_relevant: 2 (experiment 6a, 4 classes) or 3 (6b, 8 classes).
    seed: generator seed.

  Returns:
    {"inputs": [N, T_max] int32 ids in [0, 8), "targets": [N] int32 classes,
     "seq_lengths": [N] int32}, T_max = seq_len + seq_len // 10.

  Raises:
    ValueError: seq_len < 20 or num_relevant not 2 or 3.
  """
  _check_positive(num_examples=num_examples)
  if seq_len < 20:
    raise ValueError(f"seq_len must be >= 20, got {seq_len}")
  if num_relevant not in _ORDER_WINDOWS:
    raise ValueError(f"num_relevant must be one of {sorted(_ORDER_WINDOWS)}, got {num_relevant}")
  rng = np.random.default_rng(seed)
  max_len = seq_len + seq_len // 10
  lengths = rng.integers(seq_len, max_len + 1, num_examples).astype(np.int32)
  inputs = rng.integers(0, 4, (num_examples, max_len)).astype(np.int32)
  steps = np.arange(max_len)[None, :]
  inputs = np.where(steps < lengths[:, None], inputs, 0)
  rows = np.arange(num_examples)
  inputs[:, 0] = _B
  inputs[rows, lengths - 1] = _E
  bits = rng.integers(0, 2, (num_examples, num_relevant))
  for k, (lo, hi) in enumerate(_ORDER_WINDOWS[num_relevant]):
    pos = rng.integers(round(lo * seq_len), round(hi * seq_len) + 1, num_examples)
    inputs[rows, pos] = np.where(bits[:, k] == 1, _Y, _X)
  targets = (bits * (2 ** np.arange(num_relevant - 1, -1, -1))[None, :]).sum(axis=1)
  return {"inputs": inputs, "targets": targets.astype(np.int32), "seq_lengths": lengths}


# name -> (generator, its arguments settable from config.dataset, number of classes or None).
TASKS = {
    "adding_problem": (adding_problem, ("seq_len",), None),
    "copy_task": (copy_task, ("delay", "copy_length", "num_symbols"), None),
    "temporal_order": (temporal_order, ("seq_len", "num_relevant"), None),
}


def config_options() -> dict[str, Option]:
  """The `config.dataset` fields the synthetic tasks read: sizes, seed, generator arguments."""
  return {"num_train": Option(int, minimum=1), "num_test": Option(int, minimum=1),
          "seed": Option(int, minimum=0),
          **{arg: Option(int, minimum=1) for _, args, _ in TASKS.values() for arg in args}}
