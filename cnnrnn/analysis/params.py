"""Parameter counts of variable trees."""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def count_params(variables: Any, collection: str | None = "params") -> int:
  """Number of scalars in a variables tree.

  Works on concrete arrays and on `jax.eval_shape` results (ShapeDtypeStruct leaves), so a
  model's size is known without allocating it:
  `count_params(jax.eval_shape(model.init, key, x, train=False))`.

  Args:
    variables: a Flax variables dict ({"params": ..., "batch_stats": ...}) or any pytree of
      arrays.
    collection: count only this collection when `variables` is a mapping that has it
      (default "params": BatchNorm running statistics are not parameters); None counts
      every leaf.

  Returns:
    The total number of elements.
  """
  if collection is not None and isinstance(variables, Mapping) and collection in variables:
    variables = variables[collection]
  return int(sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(variables)))
