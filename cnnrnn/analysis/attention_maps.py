"""Where a Vision Transformer looks: per-head attention maps and attention rollout, as PNGs.

    logits, attention = model.apply(variables, images, return_attention=True)
    rollout = attention_rollout(attention)          # [B, T, T]
    plot_attention_rollout(images[0], rollout[0], "rollout.png")
    plot_attention_heads(images[0], attention[-1, 0], "last_layer_heads.png")

From a trained ViT's workdir (its newest checkpoint, a few images of a split):

    python -m cnnrnn.analysis.attention_maps --workdir=DIR [--out=DIR/attention] \
        [--num_images=4] [--split=test]

Attention rollout (Abnar & Zuidema 2020, "Quantifying attention flow in transformers"):
each layer's attention, averaged over heads, is mixed with the identity for the residual
connection, A' = (A + I) / 2 (rows still sum to one), and the layers are multiplied from
the input up, R = A'_L ... A'_1. Row t of R is how much token t's final state draws on each
input token. The map shown for a class-token model is the class token's row over the
patches; without a class token (GAP pooling), the mean of the patches' rows.
"""

import inspect
import math
import os

import jax.numpy as jnp
import numpy as np

from cnnrnn.analysis import plots


def attention_rollout(attention, head_fusion: str = "mean", residual: bool = True) -> np.ndarray:
  """Attention rollout over the layers.

  Args:
    attention: [L, B, H, T, T] (as `ViT(..., return_attention=True)` returns) or [L, H, T, T].
    head_fusion: "mean", "max" or "min" over heads.
    residual: mix each layer with the identity (the paper's account of residual connections).

  Returns:
    [B, T, T] (or [T, T]) whose rows sum to one.

  Raises:
    ValueError: a bad head_fusion.
  """
  fusions = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}
  if head_fusion not in fusions:
    raise ValueError(f"head_fusion={head_fusion!r}; allowed: {', '.join(fusions)}")
  a = fusions[head_fusion](jnp.asarray(attention, jnp.float32), axis=-3)  # [L, (B,) T, T]
  t = a.shape[-1]
  if residual:
    a = 0.5 * a + 0.5 * jnp.broadcast_to(jnp.eye(t, dtype=a.dtype), a.shape)
  a = a / a.sum(-1, keepdims=True)  # max/min fusion breaks row sums; restore them
  rollout = a[0]
  for layer in a[1:]:
    rollout = layer @ rollout  # later layers read the mixture of the earlier ones
  return np.asarray(rollout)


def token_map(matrix: np.ndarray, grid: tuple[int, int], num_prefix_tokens: int = 1) -> np.ndarray:
  """A [T, T] attention (or rollout) matrix -> the map over the patch grid [h, w]: the class
  token's row (num_prefix_tokens=1), or the patches' mean row (0, GAP models)."""
  matrix = np.asarray(matrix)
  row = matrix[0] if num_prefix_tokens else matrix.mean(axis=0)
  patches = row[num_prefix_tokens:]
  if patches.size != grid[0] * grid[1]:
    raise ValueError(f"{patches.size} patch tokens do not make a {grid[0]}x{grid[1]} grid")
  return patches.reshape(grid)


def _display(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float32)
  lo, hi = image.min(), image.max()
  image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
  return image[..., 0] if image.shape[-1] == 1 else image


def _overlay(ax, image: np.ndarray, patch_map: np.ndarray, title: str, alpha: float) -> None:
  h, w = image.shape[:2]
  ax.imshow(_display(image), cmap="gray")
  # Each patch's value covers its pixels (extent), so the map lines up with the patches.
  ax.imshow(patch_map, cmap="inferno", alpha=alpha, extent=(0, w, h, 0), interpolation="bilinear")
  ax.set_title(title, fontsize=8)
  ax.axis("off")


def _grid_of(image: np.ndarray, num_tokens: int, num_prefix_tokens: int) -> tuple[int, int]:
  n = num_tokens - num_prefix_tokens
  h, w = image.shape[:2]
  side = math.isqrt(n * h // w) if h != w else math.isqrt(n)
  if side <= 0 or n % side:
    raise ValueError(f"{n} patch tokens do not tile a {h}x{w} image")
  return side, n // side


def plot_attention_heads(image, attention, path: str | os.PathLike, num_prefix_tokens: int = 1,
                         title: str = "attention per head", alpha: float = 0.6) -> str:
  """One layer's attention per head, overlaid on the image, as a PNG.

  Args:
    image: [H, W, C] (any value range; shown rescaled to [0, 1]).
    attention: that layer's weights for this image, [heads, T, T].
    path: the PNG to write.
    num_prefix_tokens: 1 with a class token (its row is shown), 0 (the mean row).
    title: figure title.
    alpha: opacity of the map.

  Returns:
    The path written.
  """
  plt = plots._pyplot()  # pylint: disable=protected-access
  attention = np.asarray(attention)
  image = np.asarray(image)
  grid = _grid_of(image, attention.shape[-1], num_prefix_tokens)
  heads = attention.shape[0]
  ncols = min(heads, 4)
  nrows = math.ceil(heads / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows + 0.4), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i < heads:
      _overlay(ax, image, token_map(attention[i], grid, num_prefix_tokens), f"head {i}", alpha)
    else:
      ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100)
  plt.close(fig)
  return os.fspath(path)


def plot_attention_rollout(image, rollout, path: str | os.PathLike, num_prefix_tokens: int = 1,
                           title: str = "attention rollout", alpha: float = 0.6) -> str:
  """The image beside its attention rollout overlaid on it, as a PNG.

  Args:
    image: [H, W, C].
    rollout: [T, T] for this image (`attention_rollout(...)[b]`).
    path: the PNG to write.
    num_prefix_tokens: 1 with a class token, 0 without.
    title: figure title.
    alpha: opacity of the map.

  Returns:
    The path written.
  """
  plt = plots._pyplot()  # pylint: disable=protected-access
  image = np.asarray(image)
  grid = _grid_of(image, np.shape(rollout)[-1], num_prefix_tokens)
  fig, axes = plt.subplots(1, 2, figsize=(4.6, 2.6))
  axes[0].imshow(_display(image), cmap="gray")
  axes[0].set_title("input", fontsize=8)
  axes[0].axis("off")
  _overlay(axes[1], image, token_map(rollout, grid, num_prefix_tokens), "rollout", alpha)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100)
  plt.close(fig)
  return os.fspath(path)


def plot_workdir_attention(workdir: str, out_dir: str | None = None, num_images: int = 4,
                           split: str = "test", data_dir: str | None = None) -> list[str]:
  """Attention PNGs of a trained ViT for the first `num_images` images of `split`.

  Reads the workdir's config.json and newest checkpoint, preprocesses the images as the
  evaluation does, and writes, per image, the last layer's heads and the rollout.

  Args:
    workdir: a cnnrnn workdir of a ViT run.
    out_dir: where the PNGs go (default: WORKDIR/attention).
    num_images: how many images.
    split: the dataset split they come from.
    data_dir: the TFDS data_dir (default: the config's).

  Returns:
    The paths written.

  Raises:
    ValueError: the workdir's model does not return attention weights (not a ViT).
  """
  # Imported here: the plotting functions above need none of the training stack.
  from cnnrnn import data  # pylint: disable=g-import-not-at-top
  from cnnrnn.data import pipeline  # pylint: disable=g-import-not-at-top
  from cnnrnn.train import runs  # pylint: disable=g-import-not-at-top

  run = runs.load_run(workdir)
  config, model, variables = run.config, run.model, run.variables
  if "return_attention" not in inspect.signature(type(model).__call__).parameters:
    raise ValueError(f"model {config.model.name!r} does not return attention weights (a ViT does)")
  ds_cfg = config.dataset
  dataset = data.load(ds_cfg.name, data_dir or ds_cfg.get("data_dir"), ds_cfg.get("manual_dir"),
                      options=ds_cfg.to_dict())
  batch = next(iter(pipeline.eval_batches(
      dataset.open_split(split, False), global_batch_size=num_images,
      preprocess=data.preprocessor(ds_cfg, dataset, train=False))))
  images = batch["image"][:num_images]
  _, attention = model.apply(variables, images, train=False, return_attention=True)
  rollout = attention_rollout(attention)
  prefix = 1 if "cls_token" in variables["params"] else 0
  out_dir = out_dir or os.path.join(workdir, "attention")
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, image in enumerate(images):
    label = f"{split} image {i}, label {int(batch['label'][i])}"
    paths.append(plot_attention_heads(image, attention[-1, i],
                                      os.path.join(out_dir, f"{split}{i}_heads.png"), prefix,
                                      f"{label}: last layer, per head"))
    paths.append(plot_attention_rollout(image, rollout[i],
                                        os.path.join(out_dir, f"{split}{i}_rollout.png"), prefix,
                                        f"{label}: rollout"))
  return paths


def main(argv):
  del argv
  for path in plot_workdir_attention(_WORKDIR.value, _OUT.value, _NUM_IMAGES.value, _SPLIT.value):
    print(path)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import

  _WORKDIR = flags.DEFINE_string("workdir", None, "A cnnrnn workdir of a ViT.", required=True)
  _OUT = flags.DEFINE_string("out", None, "Folder for the PNGs (default: WORKDIR/attention).")
  _NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "How many images.")
  _SPLIT = flags.DEFINE_string("split", "test", "Dataset split of the images.")
  app.run(main)
