"""Class subsets of a labelled split: some classes only, relabelled, and N examples per class.

For transfer experiments (pretrain on CIFAR-10's classes 0-4, learn 5-9 from 10, 100 or
1,000 labels per class). Set through `config.dataset`:

  classes: original labels to keep, in the order of their new labels 0..k-1 (() = all).
  examples_per_class: keep this many examples of each class in the training split, drawn
    at random with `subset_seed` (0 = all). Evaluation splits keep every example of the
    classes.
"""

from collections.abc import Sequence

import numpy as np

from cnnrnn.data.pipeline import InMemory


def class_subset(source, classes: Sequence[int], examples_per_class: int = 0, seed: int = 0,
                 label_key: str = "label") -> InMemory:
  """The examples of `classes` in `source`, relabelled 0..k-1, optionally N per class.

  Args:
    source: a random-access split (an `InMemory` is used as is, others are read once).
    classes: original labels to keep; the i-th becomes label i.
    examples_per_class: N > 0 keeps N examples of each class (a seeded random choice; the
      kept examples stay in their original order); 0 keeps all.
    seed: the random choice's seed.
    label_key: the label field.

  Returns:
    An `InMemory` source.

  Raises:
    ValueError: repeated classes, a class absent from the split, or fewer than N examples.
  """
  classes = [int(c) for c in classes]
  if len(set(classes)) != len(classes) or not classes:
    raise ValueError(f"dataset.classes={tuple(classes)}; allowed: distinct labels, at least one")
  if examples_per_class < 0:
    raise ValueError(f"dataset.examples_per_class={examples_per_class}; allowed: >= 0 (0: all)")
  memory = source if isinstance(source, InMemory) else InMemory(source)
  labels = np.asarray(memory.arrays[label_key])
  rng = np.random.default_rng(seed)
  keep = []
  for c in classes:
    where = np.flatnonzero(labels == c)
    if not where.size:
      raise ValueError(f"dataset.classes: class {c} has no examples in this split")
    if examples_per_class:
      if where.size < examples_per_class:
        raise ValueError(f"dataset.examples_per_class={examples_per_class}: class {c} has only "
                         f"{where.size} examples")
      where = rng.choice(where, examples_per_class, replace=False)
    keep.append(where)
  keep = np.sort(np.concatenate(keep))
  arrays = {k: v[keep] for k, v in memory.arrays.items()}
  relabel = np.full(int(labels.max()) + 1, -1, labels.dtype)
  relabel[classes] = np.arange(len(classes), dtype=labels.dtype)
  arrays[label_key] = relabel[arrays[label_key]]
  return InMemory.from_arrays(arrays)
