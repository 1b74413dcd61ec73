"""Weight conversion between the zoo and torchvision / timm (ViT) state dicts, both ways.

    variables = from_torch("resnet50", torchvision_model.state_dict())
    logits = cnnrnn.models.create("resnet50").apply(variables, images_nhwc, train=False)
    state_dict = to_torch("resnet50", variables)  # numpy arrays, torchvision key names

torch is never imported at module import time: state-dict values may be torch tensors,
numpy arrays or jax arrays, and `load_state_dict` reads `.safetensors` files without torch.

How a family is described: a *layout* function maps the model to
`{flax module path: torch module prefix}` (plus, for dense layers that read a flattened
feature map, the map's (C, H, W)); the standard leaf rules then convert every leaf of those
modules (conv kernels OIHW <-> HWIO, dense kernels transposed, BatchNorm scale/bias/running
statistics). A family whose leaves need other rules (e.g. fused attention projections) can
supply its own entries instead; see `Family`. Adding a family is one layout function and
one line per name in `_FAMILIES`.

BatchNorm's `num_batches_tracked` has no Flax counterpart (it only matters for
`momentum=None`, which torchvision does not use): `from_torch` accepts and drops it,
`to_torch` writes it as 0 (or `num_batches_tracked=`).
"""

import dataclasses
import os
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnnrnn import models
from cnnrnn.interop import torch_vit
from cnnrnn.interop.entries import Entry, Path
from cnnrnn.interop.entries import conv_to_flax as _conv_to_flax
from cnnrnn.interop.entries import conv_to_torch as _conv_to_torch
from cnnrnn.interop.entries import identity as _identity
from cnnrnn.interop.entries import transpose as _transpose


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a model's modules map to torch modules.

  Attributes:
    prefixes: Flax module path -> torch module prefix, e.g. ("stem", "conv") -> "conv1".
    flattened: Flax path of a dense layer whose input is a flattened feature map -> that map's
      (C, H, W). torch flattens NCHW maps in (c, h, w) order, Flax NHWC maps in (h, w, c).
  """

  prefixes: Mapping[Path, str]
  flattened: Mapping[Path, tuple[int, int, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family's conversion.

  Attributes:
    layout: (model, Flax module paths that hold variables) -> Layout; the standard leaf rules
      apply to every module.
    trace_size: square input size used to trace the model's variable shapes (any size the
      architecture accepts), or a function of the model giving it.
    entries: optional replacement for layout + standard rules: (model, abstract variables) ->
      (entries, extra torch keys with their export values).
    kwargs_from_state_dict: optional: torch state dict -> the model keyword arguments its
      shapes fix (default: `num_classes` from the head).
    kwargs_from_variables: optional: variables -> the model keyword arguments their shapes
      fix (default: `num_classes` from the head).
    from_state_dict: optional: (state dict, model) -> the state dict adapted to that model
      (e.g. ViT position embeddings resampled to the model's resolution).
  """

  layout: Callable[[nn.Module, list[Path]], Layout] | None
  trace_size: int | Callable[[nn.Module], int]
  entries: Callable[[nn.Module, Mapping[str, Any]], tuple[list[Entry], dict[str, np.ndarray]]] | None = None
  kwargs_from_state_dict: Callable[[Mapping[str, Any]], dict] | None = None
  kwargs_from_variables: Callable[[Mapping[str, Any]], dict] | None = None
  from_state_dict: Callable[[Mapping[str, Any], nn.Module], Mapping[str, Any]] | None = None


def _flat_dense_rules(chw: tuple[int, int, int]):
  """Dense kernels over a flattened map: torch [out, C*H*W] <-> Flax [H*W*C, out]."""
  c, h, w = chw

  def to_flax(a):
    return a.reshape(a.shape[0], c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, a.shape[0])

  def to_torch(a):
    return a.reshape(h, w, c, a.shape[1]).transpose(3, 2, 0, 1).reshape(a.shape[1], c * h * w)

  return to_flax, to_torch


# (collection, Flax leaf name) -> torch leaf name.
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def standard_entries(layout: Layout, abstract: Mapping[str, Any]) -> tuple[list[Entry], dict[str, np.ndarray]]:
  """Entries for Conv, Dense and BatchNorm modules placed by `layout`.

  Args:
    layout: module placement (see `Layout`).
    abstract: the model's variables (arrays or ShapeDtypeStructs), {collection: tree}.

  Returns:
    (entries, {"<bn prefix>.num_batches_tracked": int64 0}).

  Raises:
    ValueError: a module missing from the layout, or a leaf without a standard rule.
  """
  entries, extras = [], {}
  for collection in ("params", "batch_stats"):
    for path, leaf in traverse_util.flatten_dict(dict(abstract.get(collection, {}))).items():
      module, name = path[:-1], path[-1]
      if module not in layout.prefixes:
        raise ValueError(f"no torch counterpart for Flax module {'/'.join(module)}")
      if (collection, name) not in _LEAF_NAMES:
        raise ValueError(f"no conversion rule for {collection}/{'/'.join(path)}")
      prefix = layout.prefixes[module]
      to_flax = to_torch = _identity
      if name == "kernel" and len(leaf.shape) == 4:
        to_flax, to_torch = _conv_to_flax, _conv_to_torch
      elif name == "kernel" and module in layout.flattened:
        to_flax, to_torch = _flat_dense_rules(layout.flattened[module])
      elif name == "kernel":
        to_flax = to_torch = _transpose
      entries.append(Entry(f"{prefix}.{_LEAF_NAMES[collection, name]}", collection, path,
                           to_flax, to_torch))
      if collection == "batch_stats" and name == "mean":
        extras[f"{prefix}.num_batches_tracked"] = np.array(0, np.int64)
  return entries, extras


def _module_paths(abstract: Mapping[str, Any]) -> list[Path]:
  paths = []
  for collection in abstract.values():
    for path in traverse_util.flatten_dict(dict(collection)):
      if path[:-1] not in paths:
        paths.append(path[:-1])
  return paths


def _alexnet_layout(model, paths: list[Path]) -> Layout:
  """torchvision AlexNet: features.{0,3,6,8,10}, classifier.{1,4,6}."""
  del model, paths
  prefixes = {(f"conv{i + 1}",): f"features.{j}" for i, j in enumerate((0, 3, 6, 8, 10))}
  prefixes.update({("fc1",): "classifier.1", ("fc2",): "classifier.4", ("head",): "classifier.6"})
  return Layout(prefixes, {("fc1",): (256, 6, 6)})


def _vgg_layout(model, paths: list[Path]) -> Layout:
  """torchvision VGG: `features` counts conv, (bn), relu per conv and one max pool per stage."""
  del paths
  prefixes, index = {}, 0
  for s, n in enumerate(model.stage_sizes, start=1):
    for j in range(n):
      prefixes[(f"stage{s}_conv{j}",)] = f"features.{index}"
      if model.batch_norm:
        prefixes[(f"stage{s}_bn{j}",)] = f"features.{index + 1}"
      index += 3 if model.batch_norm else 2
    index += 1  # max pool
  prefixes.update({("fc1",): "classifier.0", ("fc2",): "classifier.3", ("head",): "classifier.6"})
  return Layout(prefixes, {("fc1",): (model.widths[-1], 7, 7)})


_RESNET_NAMES = (
    (re.compile(r"stem/conv"), "conv1"),
    (re.compile(r"stem/bn"), "bn1"),
    (re.compile(r"stage(\d+)_block(\d+)/downsample/conv"), r"layer\1.\2.downsample.0"),
    (re.compile(r"stage(\d+)_block(\d+)/downsample/bn"), r"layer\1.\2.downsample.1"),
    (re.compile(r"stage(\d+)_block(\d+)/((conv|bn)\d)"), r"layer\1.\2.\3"),
    (re.compile(r"head"), "fc"),
)


def _resnet_layout(model, paths: list[Path]) -> Layout:
  """torchvision ResNet: conv1, bn1, layer{s}.{b}.{conv,bn}{i}, layer{s}.{b}.downsample.{0,1}, fc.

  The CIFAR ResNets (no torchvision counterpart) use the same names.
  """
  del model
  prefixes = {}
  for path in paths:
    joined = "/".join(path)
    for pattern, repl in _RESNET_NAMES:
      if pattern.fullmatch(joined):
        prefixes[path] = pattern.sub(repl, joined)
        break
  return Layout(prefixes)


_ALEXNET = Family(_alexnet_layout, trace_size=64)
_VGG = Family(_vgg_layout, trace_size=32)
_RESNET = Family(_resnet_layout, trace_size=32)
_VIT = Family(None, trace_size=lambda model: model.image_size, entries=torch_vit.entries,
              kwargs_from_state_dict=torch_vit.kwargs_from_state_dict,
              kwargs_from_variables=torch_vit.kwargs_from_variables,
              from_state_dict=torch_vit.from_state_dict)

_FAMILIES: dict[str, Family] = {
    "alexnet": _ALEXNET,
    **{f"vgg{d}{bn}": _VGG for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    **{f"resnet{d}": _RESNET for d in (18, 34, 50, 101, 152)},
    **{f"cifar_resnet{d}": _RESNET for d in (20, 32, 44, 56, 110)},
    **{name: _VIT for name in ("vit", *models.VIT_VARIANTS)},
}


def names() -> list[str]:
  """Model names that convert to and from torch state dicts."""
  return sorted(_FAMILIES)


def _prepare(name: str, model_kwargs: dict, abstract: Mapping[str, Any] | None = None
             ) -> tuple[Mapping[str, Any], list[Entry], dict[str, np.ndarray]]:
  """Abstract variables of the model (unless given), its entries and extra torch keys."""
  if name not in _FAMILIES:
    raise ValueError(f"no torch conversion for model {name!r}; convertible: {', '.join(names())}")
  family = _FAMILIES[name]
  model = models.create(name, **model_kwargs)
  if abstract is None:
    size = family.trace_size if isinstance(family.trace_size, int) else family.trace_size(model)
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  if family.entries is not None:
    entries, extras = family.entries(model, abstract)
  else:
    entries, extras = standard_entries(family.layout(model, _module_paths(abstract)), abstract)
  return abstract, entries, extras


def kwargs_from_state_dict(name: str, state_dict: Mapping[str, Any]) -> dict:
  """The model keyword arguments a torch state dict's shapes fix (e.g. {"num_classes": 10}).

  Raises:
    ValueError: unknown name, or the state dict lacks the keys that tell.
  """
  if name not in _FAMILIES:
    raise ValueError(f"no torch conversion for model {name!r}; convertible: {', '.join(names())}")
  family = _FAMILIES[name]
  if family.kwargs_from_state_dict is not None:
    return family.kwargs_from_state_dict(state_dict)
  _, entries, _ = _prepare(name, {})
  head = [e.torch_key for e in entries if e.path == ("head", "kernel")]
  if not head or head[0] not in state_dict:
    raise ValueError(f"state dict does not fit {name!r}: it has no head weight "
                     f"{head[0] if head else ''!r}")
  return {"num_classes": int(state_dict[head[0]].shape[0])}


def kwargs_from_variables(name: str, variables: Mapping[str, Any]) -> dict:
  """The model keyword arguments the variables' shapes fix (e.g. {"num_classes": 10})."""
  if name not in _FAMILIES:
    raise ValueError(f"no torch conversion for model {name!r}; convertible: {', '.join(names())}")
  family = _FAMILIES[name]
  if family.kwargs_from_variables is not None:
    return family.kwargs_from_variables(variables)
  head = variables.get("params", {}).get("head", {})
  return {"num_classes": int(np.shape(head["kernel"])[-1])} if "kernel" in head else {}


def _to_numpy(value) -> np.ndarray:
  """numpy view of a torch tensor (bfloat16 widened to float32), numpy or jax array."""
  if hasattr(value, "detach"):  # a torch tensor; torch itself is not imported here
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _listing(keys, limit: int = 10) -> str:
  keys = list(keys)
  more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def _leaf(abstract: Mapping[str, Any], entry: Entry):
  node = abstract[entry.collection]
  for p in entry.path:
    node = node[p]
  return node


def from_torch(name: str, state_dict: Mapping[str, Any], **model_kwargs) -> dict[str, Any]:
  """Converts a torchvision-layout state dict into the variables of `models.create(name, ...)`.

  Args:
    name: a convertible registry name (see `names()`), e.g. "resnet50".
    state_dict: torch key -> array (torch tensor, numpy or jax array), as returned by
      `torch_model.state_dict()`, `load_state_dict(path)` or `to_torch`.
    **model_kwargs: the model's keyword arguments (e.g. num_classes=10); the converted shapes
      are checked against this model.

  Returns:
    {"params": ..., "batch_stats": ...} (batch_stats only for models with BatchNorm), with
    jax arrays in the model's parameter dtype.

  Raises:
    ValueError: unknown name, missing or unexpected keys (all listed), or a key whose shape
      does not fit the model (named, with both shapes).

  Example (a round trip; a torchvision model's `state_dict()` converts the same way):

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from cnnrnn import models
    >>> from cnnrnn.interop.torch import from_torch, to_torch
    >>> model = models.create("resnet18", num_classes=10)
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)
    >>> state_dict = to_torch("resnet18", variables)  # torchvision names, numpy arrays
    >>> state_dict["conv1.weight"].shape, state_dict["fc.weight"].shape  # OIHW, [out, in]
    ((64, 3, 7, 7), (10, 512))
    >>> back = from_torch("resnet18", state_dict, num_classes=10)
    >>> all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back),
    ...                                           jax.tree.leaves(variables)))
    True
  """
  abstract, entries, extras = _prepare(name, model_kwargs)
  if _FAMILIES[name].from_state_dict is not None:
    state_dict = _FAMILIES[name].from_state_dict(state_dict, models.create(name, **model_kwargs))
  expected = {e.torch_key for e in entries}
  missing = [e.torch_key for e in entries if e.torch_key not in state_dict]
  unexpected = [k for k in state_dict if k not in expected and k not in extras]
  if missing or unexpected:
    raise ValueError(f"state dict does not fit {name!r}: missing keys [{_listing(missing)}]; "
                     f"unexpected keys [{_listing(unexpected)}]")
  flat: dict[str, dict[Path, Any]] = {}
  for e in entries:
    value = _to_numpy(state_dict[e.torch_key])
    leaf = _leaf(abstract, e)
    want = tuple(jax.eval_shape(e.to_torch, jax.ShapeDtypeStruct(leaf.shape, jnp.float32)).shape)
    if value.shape != want:
      raise ValueError(f"{e.torch_key}: shape {tuple(value.shape)} does not fit {name!r}, which "
                       f"expects {want} (Flax {e.collection}/{'/'.join(e.path)} {tuple(leaf.shape)}); "
                       f"model kwargs: {model_kwargs}")
    flat.setdefault(e.collection, {})[e.path] = jnp.asarray(e.to_flax(value), leaf.dtype)
  return {c: traverse_util.unflatten_dict(tree) for c, tree in flat.items()}


def to_torch(name: str, variables: Mapping[str, Any], *, tensors: bool = False,
             num_batches_tracked: int = 0, **model_kwargs) -> dict[str, Any]:
  """Converts variables of `models.create(name, ...)` into a torchvision-layout state dict.

  Args:
    name: a convertible registry name (see `names()`).
    variables: {"params": ..., "batch_stats": ...} of the model (other collections ignored).
    tensors: return torch tensors (imports torch) instead of numpy arrays.
    num_batches_tracked: value written to every BatchNorm's `num_batches_tracked`.
    **model_kwargs: the model's keyword arguments (e.g. num_classes=10); by default those the
      variables' shapes fix (`kwargs_from_variables`: the number of classes, for ViT also
      the resolution, width, depth and pooling).

  Returns:
    torch key -> C-contiguous numpy array (or torch tensor), in the variables' dtype;
    `torch_model.load_state_dict({k: torch.from_numpy(v) ...})` loads it, or pass
    `tensors=True`.

  Raises:
    ValueError: unknown name, or variables whose module paths do not fit the model.
  """
  if not model_kwargs and name in _FAMILIES:
    model_kwargs = kwargs_from_variables(name, variables)
  abstract, entries, extras = _prepare(name, model_kwargs)
  for collection in ("params", "batch_stats"):
    want = traverse_util.flatten_dict(dict(abstract.get(collection, {})))
    have = traverse_util.flatten_dict(dict(variables.get(collection, {})))
    missing = ["/".join(p) for p in want if p not in have]
    unexpected = ["/".join(p) for p in have if p not in want]
    if missing or unexpected:
      raise ValueError(f"{collection} do not fit {name!r}: missing [{_listing(missing)}]; "
                       f"unexpected [{_listing(unexpected)}]")
  shapes = {c: jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)),
                            dict(variables[c]))
            for c in ("params", "batch_stats") if c in variables}
  _, entries, extras = _prepare(name, model_kwargs, shapes)
  out = {}
  for e in entries:
    out[e.torch_key] = np.array(e.to_torch(np.asarray(_leaf(variables, e))), order="C")  # writable copy
  for key, value in extras.items():
    out[key] = np.full_like(value, num_batches_tracked)
  if tensors:
    import torch  # pylint: disable=g-import-not-at-top

    out = {k: torch.from_numpy(v) for k, v in out.items()}
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict as numpy arrays: `.safetensors` without torch, else a `.pth` file.

  `.pth` files are read with `torch.load(weights_only=True)`, which refuses pickled code.

  Args:
    path: a `.safetensors` file, or a file written by `torch.save(model.state_dict())`.

  Returns:
    torch key -> numpy array.

  Raises:
    ValueError: the file does not hold a flat mapping of names to tensors.
    ImportError: a `.pth` file and torch is not installed.
  """
  path = os.fspath(path)
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    return load_file(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs torch (pip install 'cnnrnn[torch]'); "
                      "safetensors files load without it") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError) as e:
    # Never loaded unsafely: pickled Python objects (a whole model from torch.save(model),
    # or any code) are refused, and torch's own advice to do so is not passed on.
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = (f"it holds pickled Python objects ({found.group(1)}), e.g. a whole model saved "
            "with torch.save(model)" if isinstance(e, pickle.UnpicklingError) and found
            else f"torch cannot read it ({type(e).__name__})")
    raise ValueError(f"{path} is not a state dict file: {what}. Allowed: a file written by "
                     "torch.save(model.state_dict()), or .safetensors") from None
  if not isinstance(obj, Mapping) or not all(hasattr(v, "detach") for v in obj.values()):
    raise ValueError(f"{path} does not hold a state dict (name -> tensor); got {type(obj).__name__}")
  return {k: _to_numpy(v) for k, v in obj.items()}


def save_state_dict(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> None:
  """Writes a state dict (e.g. from `to_torch`) as a `.safetensors` file, without torch."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  save_file({k: np.ascontiguousarray(_to_numpy(v)) for k, v in state_dict.items()}, os.fspath(path))
