"""Text from a trained language model (a workdir of `cnnrnn.main` with task language_model).

  python -m cnnrnn.sample --workdir=workdirs/char_rnn --prompt="ROMEO:" --length=500 \
      --temperature=0.8 [--num_samples=3] [--seed=0] [--checkpoint=best]

The model, dataset and vocabulary come from the workdir's config.json; the parameters from
its newest checkpoint (or `--checkpoint=best`, or a step number).
"""

if __name__ == "__main__":
  # First of all: a signal during the imports below ends the process at once, in one line.
  from cnnrnn import signals as _signals  # pylint: disable=g-import-not-at-top

  _signals.install()

import functools
import math
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from cnnrnn.data import text
from cnnrnn.models import rnn_lm
from cnnrnn.train import runs

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, on absl's global FLAGS: defined when run as a program, not
  on import (other cnnrnn programs define flags of the same names, and one process may
  import several)."""
  flags.DEFINE_string("workdir", None, "Workdir of a language-model run.")
  flags.DEFINE_string("prompt", "\n", "Text the samples continue (at least one token).")
  flags.DEFINE_integer("length", 500, "Tokens to generate per sample.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.")
  flags.DEFINE_integer("num_samples", 1, "Independent samples.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")


def load_language_model(workdir: str, checkpoint: str = "latest"):
  """Returns (model, variables, vocabulary) of a language-model workdir (`runs.load_run`).

  Raises:
    FileNotFoundError: no config.json or no checkpoint in `workdir`.
    ValueError: the run is not a language model, or a bad `checkpoint`.
  """
  run = runs.load_run(workdir, checkpoint, task="language_model")
  return run.model, {"params": run.variables["params"]}, run.vocab


def generate(model, variables, vocab: text.Vocabulary, prompt: str, *, length: int,
             temperature: float, num_samples: int = 1, seed: int = 0) -> list[str]:
  """`num_samples` continuations of `prompt` (each including the prompt) as text."""
  ids = vocab.encode(prompt)
  if not len(ids):
    raise ValueError(f"--prompt={prompt!r} has no tokens")
  prompt_ids = jnp.tile(jnp.asarray(ids)[None], (num_samples, 1))
  run = jax.jit(functools.partial(rnn_lm.sample, model, num_steps=length, temperature=temperature))
  tokens = jax.device_get(run(variables, prompt_ids, jax.random.PRNGKey(seed)))
  return [vocab.decode(t) for t in tokens]


def check_flags(length: int, temperature: float, num_samples: int) -> None:
  """Raises ValueError naming the first bad flag and what is allowed."""
  if length < 1:
    raise ValueError(f"--length={length}; allowed: an integer >= 1 (tokens per sample)")
  if not math.isfinite(temperature) or temperature < 0:
    raise ValueError(f"--temperature={temperature}; allowed: a finite number >= 0 (0: greedy)")
  if num_samples < 1:
    raise ValueError(f"--num_samples={num_samples}; allowed: an integer >= 1")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    check_flags(FLAGS.length, FLAGS.temperature, FLAGS.num_samples)  # Before any loading.
    model, variables, vocab = load_language_model(FLAGS.workdir, FLAGS.checkpoint)
    samples = generate(model, variables, vocab, FLAGS.prompt, length=FLAGS.length,
                       temperature=FLAGS.temperature, num_samples=FLAGS.num_samples,
                       seed=FLAGS.seed)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  for i, s in enumerate(samples):
    if len(samples) > 1:
      print(f"--- sample {i + 1} ---")
    print(s)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
