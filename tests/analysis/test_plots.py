"""Filter and feature-map pictures are written as PNG files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnrnn import analysis, models

pytest.importorskip("matplotlib")

_PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name,channels", [("lenet5", 1), ("cifar_resnet20", 3)])
@pytest.mark.slow
def test_plots_write_png(tmp_path, name, channels):
  model = models.create(name)
  x = jnp.zeros((1, 32, 32, channels))
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  rng = np.random.RandomState(0)
  variables = jax.tree.map(lambda a: jnp.asarray(rng.rand(*a.shape) + 0.5, a.dtype), abstract)
  path = analysis.plot_filters(variables, tmp_path / "filters.png")
  assert open(path, "rb").read(8) == _PNG
  image = rng.rand(32, 32, channels).astype(np.float32)
  layer = "stem/conv" if name == "cifar_resnet20" else None
  path = analysis.plot_feature_maps(model, variables, image, tmp_path / "maps.png", layer=layer)
  assert open(path, "rb").read(8) == _PNG
  with pytest.raises(ValueError, match="convolutions: "):
    analysis.plot_feature_maps(model, variables, image, tmp_path / "x.png", layer="nope")
