"""Text from a trained language model (a workdir of `cnnrnn.main` with task language_model).

  python -m cnnrnn.sample --workdir=workdirs/char_rnn --prompt="ROMEO:" --length=500 \
      --temperature=0.8 [--num_samples=3] [--seed=0] [--checkpoint=best]

The model, dataset and vocabulary come from the workdir's config.json; the parameters from
its newest checkpoint (or `--checkpoint=best`, or a step number).
"""

import functools
import json
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from cnnrnn import data
from cnnrnn import models
from cnnrnn.data import text
from cnnrnn.models import rnn_lm
from cnnrnn.train.checkpoint import step_directory
from cnnrnn.train.trainer import model_kwargs

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a language-model run.")
_PROMPT = flags.DEFINE_string("prompt", "\n", "Text the samples continue (at least one token).")
_LENGTH = flags.DEFINE_integer("length", 500, "Tokens to generate per sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Independent samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")


def load_language_model(workdir: str, checkpoint: str = "latest"):
  """Returns (model, variables, vocabulary) of a language-model workdir.

  Raises:
    FileNotFoundError: no config.json or no checkpoint in `workdir`.
    ValueError: the run is not a language model, or a bad `checkpoint`.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a cnnrnn.main workdir")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.task.name != "language_model":
    raise ValueError(f"{workdir} holds a {config.task.name!r} run, not a language model")
  dataset = data.load(config.dataset.name, config.dataset.get("data_dir"),
                      config.dataset.get("manual_dir"))
  vocab = text.load_corpus(dataset, config.dataset.get("level"),
                           config.dataset.get("train_split", "train")).vocab
  kwargs = model_kwargs(config.model)
  kwargs.setdefault("vocab_size", len(vocab))
  model = models.create(config.model.name, **kwargs)
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(step_directory(workdir, checkpoint), "state"))
  return model, {"params": state["params"]}, vocab


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    model, variables, vocab = load_language_model(_WORKDIR.value, _CHECKPOINT.value)
    samples = generate(model, variables, vocab, _PROMPT.value, length=_LENGTH.value,
                       temperature=_TEMPERATURE.value, num_samples=_NUM_SAMPLES.value,
                       seed=_SEED.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  for i, s in enumerate(samples):
    if len(samples) > 1:
      print(f"--- sample {i + 1} ---")
    print(s)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
