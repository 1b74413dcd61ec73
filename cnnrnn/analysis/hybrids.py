"""Pictures of the CNN + RNN hybrids, as PNG strips.

- Captioner (Show, Attend and Tell's figures): the image, then one panel per generated word
  with that word's attention map over the annotation grid overlaid on the image.

      tokens, _ = decode.generate(model, variables, images, max_len=13)
      alpha = caption_attention(model, variables, images, tokens)      # [B, T, L]
      plot_caption_attention(images[0], words(tokens[0]), alpha[0], grid, "ex0.png")

  or all at once: `caption_strips(model, variables, images, out_dir)`.
- Video classifier: a strip of the clip's frames titled with the prediction (and the label).

From a trained workdir of either model (its newest checkpoint, the first examples of a split):

    python -m cnnrnn.analysis.hybrids --workdir=DIR [--out=DIR/strips] [--num_examples=4] \
        [--split=test] [--beam_size=1]
"""

import os
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from cnnrnn import decode
from cnnrnn.analysis import plots
from cnnrnn.analysis.attention_maps import _display, _overlay  # pylint: disable=protected-access


def caption_attention(model, variables, images, tokens) -> np.ndarray:
  """The attention weights with which the captioner generated `tokens`.

  The decoder is deterministic, so feeding the generated tokens back teacher-forced
  ([bos, tokens[:-1]]) repeats the decoding steps exactly (the same `CaptionDecoderStep`).

  Args:
    model: a `Captioner` with attention.
    variables: its variables.
    images: [B, H, W, C].
    tokens: [B, T] generated ids (as `decode.generate` returns them).

  Returns:
    alpha [B, T, L]: row t is the attention while generating tokens[:, t].
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  bos = jnp.full((tokens.shape[0], 1), decode.BOS_ID, jnp.int32)
  tgt_in = jnp.concatenate([bos, tokens[:, :-1]], axis=1)
  _, alpha = model.apply(variables, images, tgt_in, return_attention=True)
  if alpha is None:
    raise ValueError("the captioner has no attention (model.attention=False): nothing to plot")
  return np.asarray(alpha)


def plot_caption_attention(image, words: Sequence[str], alpha, grid: tuple[int, int],
                           path: str | os.PathLike, alpha_overlay: float = 0.6) -> str:
  """One PNG strip: the image, then each word's attention map [h', w'] over it.

  Args:
    image: [H, W, C].
    words: the generated words (as many panels; the eos may be one of them).
    alpha: [T, L] attention weights, T >= len(words), L = h' * w'.
    grid: the annotation grid (h', w').
    path: where to write the PNG.
    alpha_overlay: opacity of the maps.

  Returns:
    The path written.

  Raises:
    ValueError: alpha does not fit the grid or has fewer rows than words.
  """
  alpha = np.asarray(alpha)
  if alpha.shape[-1] != grid[0] * grid[1] or alpha.shape[0] < len(words):
    raise ValueError(f"attention of shape {alpha.shape} does not fit {len(words)} words over a "
                     f"{grid[0]}x{grid[1]} grid")
  plt = plots._pyplot()  # pylint: disable=protected-access
  n = len(words) + 1
  fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9), squeeze=False)
  axes[0, 0].imshow(_display(np.asarray(image)), cmap="gray")
  axes[0, 0].set_title("image", fontsize=8)
  axes[0, 0].axis("off")
  for t, word in enumerate(words):
    _overlay(axes[0, t + 1], np.asarray(image), alpha[t].reshape(grid), word, alpha_overlay)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return str(path)


def caption_strips(model, variables, images, out_dir: str | os.PathLike, *,
                   vocab: Sequence[str], max_len: int = 13, beam_size: int = 1) -> list[str]:
  """Captions `images` [B, H, W, C] and writes one attention strip per image.

  Args:
    model, variables: a captioner with attention and its variables.
    images: [B, H, W, C] (preprocessed as in training).
    out_dir: folder for `caption_{b}.png`.
    vocab: id -> word.
    max_len: most tokens generated.
    beam_size: 1 greedy, K > 1 beam search.

  Returns:
    The paths written.
  """
  os.makedirs(out_dir, exist_ok=True)
  tokens, _ = decode.generate(model, variables, images, max_len=max_len, beam_size=beam_size)
  alpha = caption_attention(model, variables, images, tokens)
  encoded = model.apply(variables, images[:1], method="encode")["annotations"]
  grid = _grid(images.shape[1:3], encoded.shape[1])
  paths = []
  for b, ids in enumerate(np.asarray(tokens)):
    words = []
    for i in ids.tolist():
      words.append(vocab[i])
      if i == decode.EOS_ID:
        break
    paths.append(plot_caption_attention(images[b], words, alpha[b], grid,
                                        os.path.join(out_dir, f"caption_{b}.png")))
  return paths


def _grid(image_hw: tuple[int, int], num_locations: int) -> tuple[int, int]:
  """The (h', w') grid of L locations over an H x W image (same aspect ratio)."""
  h, w = image_hw
  for rows in range(1, num_locations + 1):
    if num_locations % rows == 0 and rows * w == (num_locations // rows) * h:
      return rows, num_locations // rows
  raise ValueError(f"{num_locations} annotation vectors do not tile a {h}x{w} image")


def plot_clip(frames, path: str | os.PathLike, prediction: str, label: str | None = None,
              length: int | None = None) -> str:
  """One PNG strip of a clip's frames titled with the prediction (and the label).

  Args:
    frames: [T, H, W, C].
    path: where to write the PNG.
    prediction: the predicted class name.
    label: the true class name, if known.
    length: the number of valid frames (padding frames are not drawn).

  Returns:
    The path written.
  """
  frames = np.asarray(frames)[:length]
  plt = plots._pyplot()  # pylint: disable=protected-access
  n = len(frames)
  fig, axes = plt.subplots(1, n, figsize=(1.2 * n, 1.6), squeeze=False)
  for t, frame in enumerate(frames):
    axes[0, t].imshow(_display(frame), cmap="gray")
    axes[0, t].set_title(f"t={t}", fontsize=7)
    axes[0, t].axis("off")
  title = f"prediction: {prediction}" + (f"   label: {label}" if label is not None else "")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return str(path)


def plot_workdir_strips(workdir: str, out_dir: str | None = None, num_examples: int = 4,
                        split: str = "test", data_dir: str | None = None,
                        beam_size: int = 1) -> list[str]:
  """Strips of a trained `captioner` (attention per generated word) or `video_classifier`
  (frames with the prediction and the label) for the first examples of `split`.

  Reads the workdir's config.json and newest checkpoint and preprocesses the examples as the
  evaluation does.

  Returns:
    The paths written (in `out_dir`, default WORKDIR/strips).

  Raises:
    ValueError: the workdir's model is neither a captioner nor a video classifier.
  """
  # Imported here: the plotting functions above need none of the training stack.
  from cnnrnn import data  # pylint: disable=g-import-not-at-top
  from cnnrnn.data import pipeline  # pylint: disable=g-import-not-at-top
  from cnnrnn.data.builders import mnist_generated  # pylint: disable=g-import-not-at-top
  from cnnrnn.train import runs  # pylint: disable=g-import-not-at-top

  config = runs.load_config(workdir)
  if config.model.name not in ("captioner", "video_classifier"):
    raise ValueError(f"workdir {workdir} trained {config.model.name!r}; strips are drawn for "
                     "'captioner' and 'video_classifier'")
  run = runs.load_run(workdir)
  model, variables = run.model, run.variables
  ds_cfg = config.dataset
  dataset = data.load(ds_cfg.name, data_dir or ds_cfg.get("data_dir"), ds_cfg.get("manual_dir"),
                      options=ds_cfg.to_dict())
  batch = next(iter(pipeline.eval_batches(
      dataset.open_split(split, False), global_batch_size=num_examples,
      preprocess=data.preprocessor(ds_cfg, dataset, train=False))))
  batch = {k: v[:num_examples] for k, v in batch.items()}
  out_dir = out_dir or os.path.join(workdir, "strips")
  os.makedirs(out_dir, exist_ok=True)
  if config.model.name == "captioner":
    max_len = config.task.get("max_decode_len") or batch["caption"].shape[1] + 1
    return caption_strips(model, variables, batch["image"], out_dir,
                          vocab=mnist_generated.CAPTION_VOCAB, max_len=max_len,
                          beam_size=beam_size)
  label_key = config.task.get("label_key", "label")
  names = (mnist_generated.DIRECTIONS if label_key == "direction"
           else [str(i) for i in range(model.num_classes)])
  lengths = batch.get("seq_lengths")
  logits = model.apply(variables, batch["image"], seq_lengths=lengths)
  paths = []
  for i, pred in enumerate(np.asarray(jnp.argmax(logits, -1))):
    paths.append(plot_clip(batch["image"][i], os.path.join(out_dir, f"clip_{i}.png"),
                           names[int(pred)], names[int(batch[label_key][i])],
                           None if lengths is None else int(lengths[i])))
  return paths


def main(argv):
  del argv
  for path in plot_workdir_strips(_WORKDIR.value, _OUT.value, _NUM_EXAMPLES.value, _SPLIT.value,
                                  beam_size=_BEAM_SIZE.value):
    print(path)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import

  _WORKDIR = flags.DEFINE_string("workdir", None, "A captioner or video_classifier workdir.",
                                 required=True)
  _OUT = flags.DEFINE_string("out", None, "Folder for the PNGs (default: WORKDIR/strips).")
  _NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 4, "How many examples.")
  _SPLIT = flags.DEFINE_string("split", "test", "Dataset split of the examples.")
  _BEAM_SIZE = flags.DEFINE_integer("beam_size", 1, "Captioner: 1 greedy, K beam search.")
  app.run(main)
