"""Pretrained weights from a cnnrnn workdir, a torch state dict file, or a hub (timm,
torchvision), in cnnrnn's layout.

A workdir is read by the loader the caller passes (`load_source(..., workdir_loader=...)`),
which is the run loader's verified restore path, `cnnrnn.train.runs.load_variables`: the
trainer passes it. This package never imports the trainer, and has no restore path of its own.
"""

from collections.abc import Callable, Mapping
import os
from typing import Any

from cnnrnn.interop import torch_zoo

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HUBS = ("timm", "torchvision")


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
    workdir_loader: workdir -> `{"params": ..., **model_state}`
      (`cnnrnn.train.runs.load_variables`); needed for a workdir source.

  Raises:
    FileNotFoundError: `source` is a path that does not exist.
    ValueError: a source of an unknown kind, or a state dict that does not fit `source_model`.
  """
  hub = source.partition(":")[0]
  if hub in HUBS:
    state_dict = _hub_state_dict(source)
  elif os.path.isdir(source):
    if workdir_loader is None:
      raise ValueError(f"transfer.source={source!r} is a workdir, but no workdir_loader was "
                       "given: pass workdir_loader=cnnrnn.train.runs.load_variables")
    return workdir_loader(source)
  elif source.endswith(STATE_DICT_SUFFIXES):
    if not os.path.exists(source):
      raise FileNotFoundError(f"transfer.source={source!r}: no such file")
    try:
      state_dict = torch_zoo.load_state_dict(source)
    except ValueError as e:
      raise ValueError(f"transfer.source={source!r}: {e}") from None
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
