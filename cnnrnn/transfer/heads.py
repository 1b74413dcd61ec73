"""Fitting pretrained weights to the new model: a fresh (or kept) head, resampled leaves,
or the source as one module of a larger model."""

from collections.abc import Callable, Mapping
from typing import Any

from flax import traverse_util
import numpy as np

from cnnrnn.transfer.groups import check_head


def adapt(source: Mapping[str, Any], target: Mapping[str, Any], head: str = "head",
          resample: Mapping[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]] | None = None,
          keep_head: bool = False) -> dict[str, Any]:
  """The source's variables in the target's shapes: the head from `target` (a fresh head),
  and leaves named in `resample` resized.

  Args:
    source: pretrained variables {collection: tree}.
    target: the new model's freshly initialised variables (numpy or jax arrays).
    head: the head's top-level name.
    resample: leaf name (e.g. "pos_embed") -> fn(array, new shape) for leaves whose shape
      may change with the input resolution.
    keep_head: keep the source's head when its shapes fit (the same classes, e.g. fine-tuning
      at a higher resolution); by default the head is always fresh.

  Returns:
    Variables with the target's tree and shapes.

  Raises:
    ValueError: listing the backbone variables missing on either side, or one whose shape
      differs (with both shapes).
  """
  check_head(target["params"], head)
  resample = resample or {}
  out = {}
  for collection, tree in target.items():
    want = traverse_util.flatten_dict(dict(tree))
    have = traverse_util.flatten_dict(dict(source.get(collection, {})))
    backbone = lambda keys: sorted("/".join(p) for p in keys if p[0] != head)
    missing = backbone(want.keys() - have.keys())
    extra = backbone(have.keys() - want.keys())
    if missing or extra:
      raise ValueError(f"pretrained {collection} do not fit the model (another architecture?): "
                       f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected "
                       f"{extra[:8]}{' ...' if len(extra) > 8 else ''}")
    head_fits = keep_head and all(p in have and np.shape(have[p]) == np.shape(v)
                    for p, v in want.items() if p[0] == head)
    flat = {}
    for path, init in want.items():
      if path[0] == head:
        flat[path] = have[path] if head_fits else init
        continue
      value = have[path]
      if np.shape(value) != np.shape(init):
        if path[-1] not in resample:
          raise ValueError(f"pretrained {collection}/{'/'.join(path)} has shape "
                           f"{tuple(np.shape(value))}, the model {tuple(np.shape(init))}")
        value = resample[path[-1]](np.asarray(value), tuple(np.shape(init)))
      flat[path] = np.asarray(value, np.asarray(init).dtype)
    out[collection] = traverse_util.unflatten_dict(flat)
  return out


def adapt_into(source: Mapping[str, Any], target: Mapping[str, Any], module: str,
               head: str = "head") -> dict[str, Any]:
  """The target's variables with its top-level `module` replaced by the source's model
  (e.g. a pretrained image model as a video classifier's frame encoder), the source's head
  dropped.

  Raises:
    ValueError: `module` is not a top-level module of the target, or the source does not
      fit it (the missing/unexpected variables, or the first shape that differs).
  """
  if module not in target["params"]:
    raise ValueError(f"transfer.target_module={module!r} is not a top-level module of the "
                     f"model; its modules: {sorted(target['params'])}")
  out = {}
  for collection, tree in target.items():
    tree = dict(tree)
    if module in tree:
      want = traverse_util.flatten_dict(dict(tree[module]))
      have = traverse_util.flatten_dict({k: v for k, v in dict(source.get(collection, {})).items()
                                         if k != head})
      if want.keys() != have.keys():
        raise ValueError(f"pretrained {collection} do not fit transfer.target_module={module!r}: "
                         f"missing {sorted('/'.join(p) for p in want.keys() - have.keys())[:8]}, "
                         f"unexpected {sorted('/'.join(p) for p in have.keys() - want.keys())[:8]}")
      for path, init in want.items():
        if np.shape(have[path]) != np.shape(init):
          raise ValueError(f"pretrained {collection}/{'/'.join(path)} has shape "
                           f"{tuple(np.shape(have[path]))}, {module!r} "
                           f"{tuple(np.shape(init))}")
      tree[module] = traverse_util.unflatten_dict(
          {p: np.asarray(have[p], np.asarray(v).dtype) for p, v in want.items()})
    out[collection] = tree
  return out


def resample_rules() -> dict[str, Callable]:
  """Leaf name -> resampling function, for the families that have resolution-dependent leaves."""
  from cnnrnn.models.vit import resample_pos_embed_to_shape  # pylint: disable=g-import-not-at-top

  return {"pos_embed": resample_pos_embed_to_shape}
