"""Pretrained weights from a cnnrnn workdir, a torch state dict file, or a hub (timm,
torchvision), in cnnrnn's layout.

A workdir is read by the loader the caller passes (`load_source(..., workdir_loader=...)`:
the trainer passes its run loader), or else by `load_workdir` here (its newest Orbax
checkpoint, params and model state only). This package never imports the trainer.
"""

from collections.abc import Callable, Mapping
import os
from typing import Any

import jax
import numpy as np

from cnnrnn.interop import torch_zoo

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HUBS = ("timm", "torchvision")


def _newest_checkpoint(workdir: str) -> str:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
  if not steps:
    raise ValueError(f"transfer.source={workdir!r} is a directory without Orbax checkpoints "
                     f"(expected {ckpt_dir}/<step>/state); give a cnnrnn workdir or a state "
                     f"dict file ({', '.join(STATE_DICT_SUFFIXES)})")
  return os.path.join(ckpt_dir, str(max(steps)), "state")


def load_workdir(workdir: str) -> dict[str, Any]:
  """The params and model state (e.g. batch_stats) of a cnnrnn workdir's newest checkpoint,
  as host numpy arrays; the optimizer state is not read.

  Returns:
    `{"params": ..., **model_state}`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(_newest_checkpoint(workdir))
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    wanted = {"params": tree["params"], "model_state": tree.get("model_state") or {}}
    is_leaf = lambda m: hasattr(m, "shape")
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted,
                                is_leaf=is_leaf)
    item = jax.tree.map(lambda m: np.zeros((), m.dtype), wanted, is_leaf=is_leaf)
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return {"params": restored["params"], **(restored.get("model_state") or {})}


def _hub_state_dict(source: str) -> Mapping[str, Any]:
  """Published weights "timm:NAME" or "torchvision:WEIGHTS", downloaded once and cached."""
  hub, _, name = source.partition(":")
  import torch  # pylint: disable=g-import-not-at-top

  cache = os.path.join(torch.hub.get_dir(), "checkpoints")
  if hub == "torchvision":
    import torchvision  # pylint: disable=g-import-not-at-top

    try:
      weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as e:
      raise ValueError(f"transfer.source={source!r}: unknown torchvision weights {name!r} "
                       "(e.g. 'ResNet50_Weights.IMAGENET1K_V2')") from e
    url = weights.url
    try:
      sd = torch.hub.load_state_dict_from_url(url, model_dir=cache, map_location="cpu",
                                              weights_only=True, check_hash=False)
    except OSError as e:  # URLError is an OSError
      raise OSError(f"transfer.source={source!r}: cannot download {url} ({e}). Offline, put that "
                    f"file into {cache}/ (same name) or give its path as transfer.source") from e
    return sd
  import timm  # pylint: disable=g-import-not-at-top

  try:
    model = timm.create_model(name, pretrained=True)
  except RuntimeError as e:
    if "Unknown model" in str(e):
      raise ValueError(f"transfer.source={source!r}: timm has no model {name!r}") from e
    raise
  except OSError as e:
    cfg = timm.models.get_pretrained_cfg(name.split(".")[0] if "." not in name else name)
    where = (f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
             if cfg is not None and cfg.hf_hub_id else "the weights' URL in timm's pretrained_cfg")
    raise OSError(f"transfer.source={source!r}: cannot download timm weights ({e}). Offline, "
                  f"download {where} elsewhere and set transfer.source to that file's path "
                  "(timm's hub cache is the Hugging Face cache, HF_HOME)") from e
  return model.state_dict()


def load_source(source: str, source_model: str, model_kwargs: Mapping[str, Any], *,
                workdir_loader: Callable[[str], dict] | None = None) -> dict[str, Any]:
  """Variables in cnnrnn layout from any pretrained source (see `cnnrnn.transfer`).

  Args:
    source: a workdir, a state dict file, or "timm:NAME" / "torchvision:WEIGHTS".
    source_model: registry name that converts a torch state dict (`cnnrnn.interop.torch`).
    model_kwargs: the target model's keyword arguments; a torch source is converted with
      these, but with its own number of classes (and, for ViT, its own resolution).
    workdir_loader: workdir -> `{"params": ..., **model_state}`; None: `load_workdir`.

  Raises:
    FileNotFoundError: `source` is a path that does not exist.
    ValueError: a source of an unknown kind, or a state dict that does not fit `source_model`.
  """
  hub = source.partition(":")[0]
  if hub in HUBS:
    state_dict = _hub_state_dict(source)
  elif os.path.isdir(source):
    return (workdir_loader or load_workdir)(source)
  elif source.endswith(STATE_DICT_SUFFIXES):
    if not os.path.exists(source):
      raise FileNotFoundError(f"transfer.source={source!r}: no such file")
    state_dict = torch_zoo.load_state_dict(source)
  elif not os.path.exists(source):
    raise FileNotFoundError(
        f"transfer.source={source!r}: no such workdir or file. Allowed: a cnnrnn workdir, a "
        f"state dict file ({', '.join(STATE_DICT_SUFFIXES)}), or {' / '.join(HUBS)}:NAME")
  else:
    raise ValueError(f"transfer.source={source!r}: neither a workdir nor a state dict file "
                     f"({', '.join(STATE_DICT_SUFFIXES)})")
  kwargs = dict(model_kwargs) | torch_zoo.kwargs_from_state_dict(source_model, state_dict)
  try:
    return torch_zoo.from_torch(source_model, state_dict, **kwargs)
  except ValueError as e:
    raise ValueError(f"transfer.source={source!r} does not fit transfer.source_model="
                     f"{source_model!r}: {e}") from e
