"""`config.dataset` options: the fields a dataset reader declares beyond the defaults.

Whoever reads a `config.dataset` field declares it, beside the code that reads it, as a
mapping name -> `Option`:

- a builder (`cnnrnn.data.builders.BUILDERS`): its `config_options()` classmethod;
- a synthetic task: its arguments in `cnnrnn.data.synthetic.TASKS`;
- a reader module (streams, sources, translation, tokenizers): its `CONFIG_OPTIONS`.

`cnnrnn.data.streams.config_options()` gathers them all, and the config schema
(`cnnrnn.train.config_schema`) reads that: adding a dataset option touches the dataset's
own file only. An option's type, choices and minimum are checked before anything is
read or compiled; a misspelt option gets the closest declared names as suggestions.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Option:
  """One `config.dataset` option.

  Attributes:
    type: the type of its values (int, float, str, bool or tuple; ints pass for floats).
    choices: the allowed values, if only some are (empty: any of `type`).
    minimum: the smallest allowed number (inclusive; None: unbounded).

  None is always allowed: it means "unset" (the reader's default).
  """

  type: type
  choices: tuple = ()
  minimum: float | None = None


def merge(*declarations: dict) -> dict[str, "Option"]:
  """One mapping of several declarations; plain types stand for `Option(type)`.

  Raises:
    ValueError: two owners declare one name differently.
  """
  out: dict[str, Option] = {}
  for declared in declarations:
    for name, option in declared.items():
      option = option if isinstance(option, Option) else Option(option)
      if name in out and out[name] != option:
        raise ValueError(f"dataset.{name} is declared twice, differently: {out[name]} and {option}")
      out[name] = option
  return out
