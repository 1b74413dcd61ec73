"""Variants as data: one constructor that builds a module from a named table of settings."""

from collections.abc import Callable, Mapping

import flax.linen as nn


def variant_constructor(module_class: type[nn.Module], variants: Mapping[str, dict],
                        name: str) -> Callable[..., nn.Module]:
  """`build(variant=None, **kwargs)`: `module_class` with `variants[variant]`'s settings,
  overridden by `kwargs` (no variant: `module_class(**kwargs)`).

  The constructor's `module_class` attribute names what it builds, so that the config
  schema checks `model.*` fields against the module's own fields.

  Args:
    module_class: the Flax module to build.
    variants: variant name -> keyword arguments.
    name: the constructor's name (the registry's model name).

  Returns:
    The constructor; it raises ValueError naming `model.variant` and the known variants.
  """

  def build(variant: str | None = None, **kwargs) -> nn.Module:
    if variant is None:
      return module_class(**kwargs)
    if variant not in variants:
      raise ValueError(f"model.variant={variant!r}; known: {', '.join(variants)}")
    return module_class(**{**variants[variant], **kwargs})

  build.__name__ = build.__qualname__ = name
  build.__doc__ = (f"A `{module_class.__name__}` with a variant's settings (`VARIANTS`: "
                   f"{', '.join(variants)}), overridden by `kwargs`.")
  build.module_class = module_class
  return build
