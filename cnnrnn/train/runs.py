"""The one run loader: what a trained workdir holds, for every reader of one.

`load_run(workdir)` reads the run's `config.json`, restores its parameters through the
one verified restore path (`checkpoint.restore_variables`: digests checked, a damaged
newest step skipped with a warning), builds its model, and loads the tokenizers or
vocabulary its task needs. `cnnrnn.sample`, `cnnrnn.translate`, the analysis helpers and
`transfer` (a workdir as source) all read workdirs through it.

    run = load_run("workdirs/char_rnn", task="language_model")
    logits = run.model.apply(run.variables, tokens)
"""

import dataclasses
import inspect
import json
import os
from typing import Any

import flax.linen as nn
import ml_collections

from cnnrnn.train import checkpoint

CONFIG_FILE = "config.json"


@dataclasses.dataclass
class Run:
  """A trained run as `load_run` returns it.

  Attributes:
    workdir: the run's directory.
    config: its config (from config.json), or None when it was not asked for.
    step: the checkpoint step the variables come from.
    variables: {"params": ..., **model_state} as host numpy arrays.
    model: the Flax module (None with `build_model=False`).
    vocab: the character/word vocabulary of a language-model run, else None.
    source_tokenizer, target_tokenizer, max_length: of a translation run, else None.
  """

  workdir: str
  config: ml_collections.ConfigDict | None
  step: int
  variables: dict[str, Any]
  model: nn.Module | None = None
  vocab: Any = None
  source_tokenizer: Any = None
  target_tokenizer: Any = None
  max_length: int | None = None


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was trained with.

  Raises:
    FileNotFoundError: `workdir` is not a directory or has no config.json.
    ValueError: config.json is not valid JSON.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir}: no such directory")
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a cnnrnn.main workdir")
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from e


def load_run(workdir: str, checkpoint_name: str = "latest", *, task: str | None = None,
             build_model: bool = True) -> Run:
  """Loads a trained run: config, restored variables, model and tokenizers.

  Args:
    workdir: a `cnnrnn.main` workdir.
    checkpoint_name: "latest", "best" or a step number.
    task: the task the run must have been trained for (e.g. "translation"), or None.
    build_model: also build the model and its tokenizers (False: config and variables
      only; then a workdir without config.json is read too).

  Returns:
    The `Run`.

  Raises:
    FileNotFoundError: no config.json (with `build_model`) or no checkpoint.
    ValueError: another task, a bad `checkpoint_name`, or no checkpoint passes its checks.
  """
  config = None
  if build_model or task or os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
    config = load_config(workdir)
  if task is not None and config.task.name != task:
    raise ValueError(f"{workdir} holds a {config.task.name!r} run, not a {task} run")
  step, parts = checkpoint.restore_variables(os.path.join(workdir, "checkpoints"),
                                             str(checkpoint_name))
  variables = {"params": parts["params"], **(parts.get("model_state") or {})}
  run = Run(workdir=workdir, config=config, step=step, variables=variables)
  if build_model:
    _build_model(run)
  return run


def load_variables(workdir: str) -> dict[str, Any]:
  """`{"params": ..., **model_state}` of a workdir's newest checkpoint that passes its checks
  (`load_run` without the model): what `cnnrnn.transfer` reads from a workdir source.

  Raises:
    ValueError: `workdir` has no checkpoints (naming what a source may be), or none passes.
  """
  if not checkpoint.checkpoint_steps(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"transfer.source={workdir!r} is a directory without checkpoints (expected "
                     f"{os.path.join(workdir, 'checkpoints')}/<step>); give a cnnrnn workdir, a "
                     f"state dict file or a hub name")
  return load_run(workdir, build_model=False).variables


def _build_model(run: Run) -> None:
  """Fills in `run.model` (and the tokenizers its task needs) from `run.config`."""
  # Imported here: reading variables needs none of the model and data stack.
  from cnnrnn import data  # pylint: disable=g-import-not-at-top
  from cnnrnn import models  # pylint: disable=g-import-not-at-top
  from cnnrnn.train.trainer import model_kwargs  # pylint: disable=g-import-not-at-top

  config = run.config
  kwargs = model_kwargs(config.model)
  task = config.task.name
  if task in ("language_model", "translation"):
    dataset = data.load(config.dataset.name, config.dataset.get("data_dir"),
                        config.dataset.get("manual_dir"))
    if task == "language_model":
      from cnnrnn.data import text  # pylint: disable=g-import-not-at-top

      run.vocab = text.load_corpus(dataset, config.dataset.get("level"),
                                   config.dataset.get("train_split", "train")).vocab
      kwargs.setdefault("vocab_size", len(run.vocab))
    else:
      from cnnrnn.data import translation  # pylint: disable=g-import-not-at-top

      run.source_tokenizer, run.target_tokenizer, run.max_length = translation.load_tokenizers(
          config.dataset, dataset)
      kwargs.setdefault("vocab_size", run.source_tokenizer.vocab_size)
      kwargs.setdefault("tgt_vocab_size", run.target_tokenizer.vocab_size)
  head = run.variables["params"].get("head", {})
  accepted = inspect.signature(models.get_constructor(config.model.name)).parameters
  if "kernel" in head and "num_classes" in accepted:
    kwargs.setdefault("num_classes", int(head["kernel"].shape[-1]))  # Filled from the data.
  run.model = models.create(config.model.name, **kwargs)

