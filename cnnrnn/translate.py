"""Translate with a trained model (a workdir of `cnnrnn.main` with task translation).

  python -m cnnrnn.translate --workdir=workdirs/multi30k_transformer_small \
      [--input=sentences.de] [--beam_size=4] [--checkpoint=best]
  python -m cnnrnn.translate --workdir=... --sentence="Ein Hund läuft im Schnee." \
      --attention_png=attention.png

Reads one sentence per line from --input (or stdin, or --sentence) and prints one
detokenised translation per line, in order. The model, dataset and tokenisers come from the
workdir's config.json (the tokenisers stored beside the prepared data are reused); the
parameters from its newest checkpoint (or `--checkpoint=best`, or a step number).
--attention_png writes the heat map of the last decoder layer's cross-attention (averaged
over heads; source tokens across, target tokens down) for --sentence, for models whose
`decode(encoded, tgt_in, return_weights=True)` returns attention weights.
"""

if __name__ == "__main__":
  # First of all: a signal during the imports below ends the process at once, in one line.
  from cnnrnn import signals as _signals  # pylint: disable=g-import-not-at-top

  _signals.install()

import inspect
import math
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from cnnrnn.data import tokenizers
from cnnrnn.data import translation as tr
from cnnrnn.tasks.translation import Translation
from cnnrnn.train import runs

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined only when run as a program: `cnnrnn.sample` defines
  flags of the same names, and tests import both modules)."""
  flags.DEFINE_string("workdir", None, "Workdir of a translation run.", required=True)
  flags.DEFINE_string("input", None, "File of source sentences, one per line (default: stdin).")
  flags.DEFINE_string("sentence", None, "One source sentence (instead of --input).")
  flags.DEFINE_integer("beam_size", None, "Beam size; 1 is greedy (default: the run's "
                       "task.beam_size).")
  flags.DEFINE_float("length_penalty", None, "GNMT length-penalty alpha (default: the run's).")
  flags.DEFINE_integer("max_decode_len", None, "Most tokens per translation (default: the "
                       "run's).")
  flags.DEFINE_integer("batch_size", 64, "Sentences decoded together.")
  flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
  flags.DEFINE_string("attention_png", None, "Write the attention heat map of --sentence to "
                      "this PNG.")


class Translator:
  """A trained translation model with its tokenisers.

  Attributes:
    model, variables: the Flax module and its restored variables.
    source_tokenizer, target_tokenizer: from the run's data settings.
    task: the run's `Translation` task (decoding settings), possibly overridden.
    max_length: the longest source (in ids) the run was trained on; longer ones are cut.
  """

  def __init__(self, model, variables, source_tokenizer, target_tokenizer, task: Translation,
               max_length: int):
    self.model, self.variables = model, variables
    self.source_tokenizer, self.target_tokenizer = source_tokenizer, target_tokenizer
    self.task, self.max_length = task, max_length
    self._decode = jax.jit(task.decode_fn(model, task.max_decode_len or max_length))

  def translate_ids(self, sentences: list[str], batch_size: int = 64) -> list[np.ndarray]:
    """The decoded target ids (EOS, then padding, included) of each sentence, in order."""
    src = [self.source_tokenizer.encode(s)[: self.max_length] for s in sentences]
    empty = [np.zeros(0, np.int32)] * len(src)
    split = tr.PairedSplit(src, empty, list(sentences), [""] * len(src))
    out: list = [None] * len(src)
    for batch in tr.eval_batches(split, global_batch_size=batch_size, max_length=self.max_length):
      tokens = jax.device_get(self._decode(self.variables, batch["src"], batch["src_lengths"]))
      for ids, i, real in zip(tokens, batch["index"], batch["mask"]):
        if real:
          out[int(i)] = np.asarray(ids)
    return out

  def translate(self, sentences: list[str], batch_size: int = 64) -> list[str]:
    """Detokenised translations of `sentences`, in order."""
    return [self.target_tokenizer.decode(ids) for ids in self.translate_ids(sentences, batch_size)]

  def attention(self, sentence: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(weights [T, S], source tokens [S], target tokens [T]): the last decoder layer's
    cross-attention, averaged over heads, while reading back the model's own translation
    (teacher-forced), its T rows the target tokens through EOS.

    Raises:
      ValueError: the model does not return attention weights.
    """
    decode = getattr(self.model, "decode", None)
    if (not hasattr(self.model, "encode") or decode is None
        or "return_weights" not in inspect.signature(decode).parameters):
      raise ValueError(f"model {type(self.model).__name__} has no encode/decode(..., "
                       "return_weights=True): it cannot show attention weights")
    src = self.source_tokenizer.encode(sentence)[: self.max_length]
    ids = tokenizers.content_ids(self.translate_ids([sentence])[0])
    tgt_in = np.concatenate([[tokenizers.BOS_ID], ids]).astype(np.int32)[None]
    encoded = self.model.apply(self.variables, jnp.asarray(src[None]), method="encode")
    _, weights = self.model.apply(self.variables, encoded, jnp.asarray(tgt_in),
                                  return_weights=True, method="decode")
    cross = _last_cross_attention(weights)  # [1, H, T, S]
    matrix = np.asarray(cross)[0].mean(axis=0)
    source = [self.source_tokenizer.pieces([i])[0] for i in src]
    eos = tokenizers.SPECIAL_TOKENS[tokenizers.EOS_ID]
    target = [self.target_tokenizer.pieces([i])[0] for i in ids] + [eos]
    return matrix, source, target


def _last_cross_attention(weights):
  """The cross-attention weights [B, H, T, S] of the last layer in a model's weights output
  (a list over layers of {"self": ..., "cross": ...}, or one such dict, or the array)."""
  if isinstance(weights, (list, tuple)):
    weights = weights[-1]
  if isinstance(weights, dict):
    if "cross" not in weights:
      raise ValueError(f"the model's attention weights have no 'cross' entry: {sorted(weights)}")
    weights = weights["cross"]
  return weights


def load_translator(workdir: str, checkpoint: str = "latest", **task_overrides) -> Translator:
  """The model, variables and tokenisers of a translation workdir.

  Args:
    workdir: a `cnnrnn.main` workdir with task translation.
    checkpoint: "latest", "best" or a step number.
    **task_overrides: `Translation` fields to change (beam_size, length_penalty,
      max_decode_len); None values are ignored.

  Raises:
    FileNotFoundError: no config.json or no checkpoint in `workdir`.
    ValueError: the run is not a translation run, or a bad `checkpoint`.
  """
  run = runs.load_run(workdir, checkpoint, task="translation")
  task_fields = {k: v for k, v in run.config.task.to_dict().items() if k != "name"}
  task = Translation(**(task_fields | {k: v for k, v in task_overrides.items() if v is not None}))
  return Translator(run.model, run.variables, run.source_tokenizer, run.target_tokenizer, task,
                    run.max_length)


def plot_attention(matrix: np.ndarray, source: list[str], target: list[str], path: str) -> None:
  """Writes a heat map of `matrix` [T, S] (target tokens down, source tokens across)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(0.45 * len(source) + 2, 0.45 * len(target) + 1.5))
  ax.imshow(matrix, cmap="viridis", vmin=0.0, aspect="auto")
  ax.set_xticks(range(len(source)), source, rotation=90)
  ax.set_yticks(range(len(target)), target)
  ax.set_xlabel("source")
  ax.set_ylabel("translation")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def check_flags(batch_size: int, beam_size: int | None, length_penalty: float | None,
                max_decode_len: int | None, sentence: str | None) -> None:
  """Raises ValueError naming the first bad flag and what is allowed."""
  if batch_size < 1:
    raise ValueError(f"--batch_size={batch_size}; allowed: an integer >= 1")
  if beam_size is not None and beam_size < 1:
    raise ValueError(f"--beam_size={beam_size}; allowed: an integer >= 1 (1: greedy)")
  if length_penalty is not None and not (math.isfinite(length_penalty) and length_penalty >= 0):
    raise ValueError(f"--length_penalty={length_penalty}; allowed: a finite number >= 0")
  if max_decode_len is not None and max_decode_len < 1:
    raise ValueError(f"--max_decode_len={max_decode_len}; allowed: an integer >= 1")
  if sentence is not None and not sentence.strip():
    raise ValueError(f"--sentence={sentence!r} is empty; allowed: a sentence with words")


def read_sentences(sentence: str | None, path: str | None) -> list[str]:
  """The source sentences: --sentence, else the lines of --input (UTF-8), else stdin's.

  Raises:
    ValueError: --input is a directory, missing, or not UTF-8 text (naming the file).
  """
  if sentence is not None:
    return [sentence]
  if not path:
    return sys.stdin.read().splitlines()
  if os.path.isdir(path):
    raise ValueError(f"--input={path} is a directory; allowed: a text file, one sentence per line")
  if not os.path.isfile(path):
    raise ValueError(f"--input={path}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"--input={path} is not UTF-8 text (byte {e.start}: {e.reason}); allowed: "
                     f"a UTF-8 file (e.g. iconv -f latin1 -t utf-8 {path})") from e


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.attention_png and not FLAGS.sentence:
    raise app.UsageError("--attention_png needs --sentence")
  try:
    check_flags(FLAGS.batch_size, FLAGS.beam_size, FLAGS.length_penalty, FLAGS.max_decode_len,
                FLAGS.sentence)
    sentences = read_sentences(FLAGS.sentence, FLAGS.input)  # Before the model is loaded.
    translator = load_translator(FLAGS.workdir, FLAGS.checkpoint, beam_size=FLAGS.beam_size,
                                 length_penalty=FLAGS.length_penalty,
                                 max_decode_len=FLAGS.max_decode_len)
    for line in translator.translate(sentences, FLAGS.batch_size):
      print(line)
    if FLAGS.attention_png:
      plot_attention(*translator.attention(FLAGS.sentence), FLAGS.attention_png)
      print(f"Attention heat map: {FLAGS.attention_png}", file=sys.stderr)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
