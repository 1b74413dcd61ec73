"""Parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np

from cnnrnn import analysis, models


def test_count_params_counts_only_params_by_default():
  variables = {"params": {"a": np.zeros((3, 4)), "b": {"c": np.zeros(5)}},
               "batch_stats": {"mean": np.zeros(7)}}
  assert analysis.count_params(variables) == 17
  assert analysis.count_params(variables, collection=None) == 24
  assert analysis.count_params(variables["params"]) == 17  # a bare tree
  assert analysis.count_params([jnp.ones((2, 2)), 1.0]) == 5


def test_count_params_of_abstract_lenet():
  model = models.create("lenet5")
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))
  assert analysis.count_params(abstract) == 61_706
