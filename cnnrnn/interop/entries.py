"""What the torch converters share: one converted array (`Entry`) and the leaf rules.

`torch_zoo` (torchvision layouts) and `torch_vit` (timm ViT) both describe a model as a
list of entries; they import this module, not each other.
"""

from collections.abc import Callable
import dataclasses

import numpy as np

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
  """One array: where it lives in each format and how to convert it.

  Attributes:
    torch_key: key in the torch state dict, e.g. "layer1.0.conv1.weight".
    collection: Flax collection, "params" or "batch_stats".
    path: path inside the collection, e.g. ("stage1_block0", "conv1", "kernel").
    to_flax: torch-layout array -> Flax-layout array.
    to_torch: Flax-layout array -> torch-layout array.
  """

  torch_key: str
  collection: str
  path: Path
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]


def identity(a: np.ndarray) -> np.ndarray:
  return a


def transpose(a: np.ndarray) -> np.ndarray:
  return a.T  # dense: [out, in] <-> [in, out]


def conv_to_flax(w: np.ndarray) -> np.ndarray:
  return w.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]


def conv_to_torch(k: np.ndarray) -> np.ndarray:
  return k.transpose(3, 2, 0, 1)  # [kh, kw, I, O] -> [O, I, kh, kw]
