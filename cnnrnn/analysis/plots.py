"""Pictures of what a CNN learned: first-layer filters and feature maps, saved as PNG.

matplotlib (the `plots` extra) is imported only when a function is called, with the
non-interactive Agg backend, so this module imports on machines without a display.
"""

import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("plots need matplotlib: pip install 'cnnrnn[plots]'") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def first_conv_kernel(variables: Mapping[str, Any]) -> tuple[str, np.ndarray]:
  """The first 4-D kernel in a variables tree (creation order = call order in Flax).

  Args:
    variables: {"params": ...} or a bare params tree.

  Returns:
    (path such as "stem/conv/kernel", kernel [kh, kw, C_in, C_out]).

  Raises:
    ValueError: the tree holds no convolution kernel.
  """
  params = variables.get("params", variables)
  for path, leaf in traverse_util.flatten_dict(dict(params)).items():
    if path[-1] == "kernel" and np.ndim(leaf) == 4:
      return "/".join(path), np.asarray(leaf, np.float32)
  raise ValueError("no 4-D convolution kernel in the variables")


def _normalise(a: np.ndarray) -> np.ndarray:
  lo, hi = float(a.min()), float(a.max())
  return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _grid(images: list[np.ndarray], path: str | os.PathLike, title: str, cmap: str | None,
          ncols: int | None, cell_inches: float) -> str:
  plt = _pyplot()
  n = len(images)
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_inches, nrows * cell_inches + 0.4),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      ax.imshow(images[i], cmap=cmap, interpolation="nearest")
  fig.suptitle(title)
  fig.tight_layout()
  path = os.fspath(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_filters(variables: Mapping[str, Any], path: str | os.PathLike, *,
                 max_filters: int = 64, ncols: int | None = None) -> str:
  """Saves the first convolution's filters as a grid PNG.

  Filters over 3 input channels are drawn in colour (each filter scaled to [0, 1]), other
  filters as the grey-scale mean over input channels.

  Args:
    variables: the model's variables (or params).
    path: output PNG path.
    max_filters: draw at most this many filters.
    ncols: grid columns (default: a square grid).

  Returns:
    The path written.
  """
  name, kernel = first_conv_kernel(variables)  # [kh, kw, C_in, C_out]
  n = min(kernel.shape[-1], max_filters)
  colour = kernel.shape[2] == 3
  images = [_normalise(kernel[..., i] if colour else kernel[..., i].mean(axis=-1)) for i in range(n)]
  return _grid(images, path, f"{name} ({kernel.shape[0]}x{kernel.shape[1]}, {n} filters)",
               None if colour else "gray", ncols, 1.0)


def plot_feature_maps(model: nn.Module, variables: Mapping[str, Any], image: Any,
                      path: str | os.PathLike, *, layer: str | None = None,
                      max_maps: int = 64, ncols: int | None = None) -> str:
  """Saves the feature maps of one convolution for one image as a grid PNG.

  Args:
    model: the (unbound) model.
    variables: its variables.
    image: [H, W, C] image, preprocessed as the model expects.
    path: output PNG path.
    layer: module path of a convolution, e.g. "conv1" or "stem/conv" (default: the first
      convolution called).
    max_maps: draw at most this many channels.
    ncols: grid columns (default: a square grid).

  Returns:
    The path written.

  Raises:
    ValueError: `layer` is not a convolution of the model (the message lists them).
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 3:
    raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
  _, state = model.apply(variables, image[None], train=False,
                         capture_intermediates=lambda m, method: isinstance(m, nn.Conv)
                         and method == "__call__", mutable=["intermediates"])
  captured = {"/".join(p[:-1]): v for p, v in
              traverse_util.flatten_dict(dict(state["intermediates"])).items()}
  if not captured:
    raise ValueError("the model called no convolution")
  name = layer if layer is not None else next(iter(captured))
  if name not in captured:
    raise ValueError(f"layer={layer!r} is not a convolution of the model; convolutions: "
                     f"{', '.join(captured)}")
  maps = np.asarray(jax.device_get(captured[name][0]))[0]  # [H', W', C']
  n = min(maps.shape[-1], max_maps)
  images = [maps[..., i] for i in range(n)]
  return _grid(images, path, f"{name}: {n} of {maps.shape[-1]} maps, {maps.shape[0]}x{maps.shape[1]}",
               "viridis", ncols, 1.2)
