"""UCR time-series classification datasets bundled with sktime (no download).

The UCR archive (Dau et al. 2019) splits every dataset into its own TRAIN and TEST files;
they are read here from the `.ts` copies that ship inside the `sktime` package (install
`cnnrnn[timeseries]`). Each example is `series` [T, 1] float32 (the archive's values, already
z-normalised per series) and `label` (the archive's class labels in sorted order, 0..K-1).

| name | train | test | length T | classes |
|---|---:|---:|---:|---:|
| `ucr_gunpoint` | 50 | 150 | 150 | 2 |
| `ucr_italy_power_demand` | 67 | 1,029 | 24 | 2 |
| `ucr_arrowhead` | 36 | 175 | 251 | 3 |
| `ucr_osuleaf` | 200 | 242 | 427 | 6 |
"""

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import base
from cnnrnn.data.builders.time_series import package_file


def read_ts(path: str) -> tuple[np.ndarray, list[str], list[str]]:
  """Reads a univariate, equal-length sktime/UCR `.ts` file.

  Returns:
    (values [N, T] float32, labels [N] as written, the `@classLabel` names in file order).

  Raises:
    ValueError: a multivariate or unequal-length file, or a line without a label.
  """
  rows, labels, names = [], [], []
  in_data = False
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if not in_data:
        key = line.lower()
        if key.startswith("@classlabel"):
          names = line.split()[2:]
        elif key.startswith("@univariate") and line.split()[1].lower() != "true":
          raise ValueError(f"{path} is multivariate; only univariate .ts files are read")
        elif key.startswith("@data"):
          in_data = True
        continue
      values, sep, label = line.rpartition(":")
      if not sep or ":" in values:
        raise ValueError(f"{path}: a data line is not 'v1,...,vT:label' (one dimension)")
      rows.append(np.array(values.split(","), np.float32))
      labels.append(label.strip())
  if len({len(r) for r in rows}) != 1:
    raise ValueError(f"{path} has series of different lengths")
  return np.stack(rows), labels, names


class UCR(base.RawFilesBuilder, skip_registration=True):
  """One UCR dataset (module docstring); subclasses set `name` and `PROBLEM`."""

  PROBLEM: str = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From the .ts files bundled with sktime."}

  def _paths(self) -> dict[str, str]:
    return {s: package_file("sktime", "datasets", "data", self.PROBLEM,
                            f"{self.PROBLEM}_{s.upper()}.ts") for s in ("train", "test")}

  def _read(self):
    out = {s: read_ts(p) for s, p in self._paths().items()}
    names = out["train"][2] or sorted(set(out["train"][1]))
    classes = sorted(names, key=lambda n: (float(n), n) if _is_number(n) else (np.inf, n))
    return out, classes

  def _info(self):
    out, classes = self._read()
    length = out["train"][0].shape[1]
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "series": tfds.features.Tensor(shape=(length, 1), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=classes),
        }),
        supervised_keys=("series", "label"),
        homepage="https://www.cs.ucr.edu/~eamonn/time_series_data_2018/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Shipped inside sktime.
    self._source_digests = {f"{self.PROBLEM}_{s.upper()}.ts": base.sha256(p)
                            for s, p in self._paths().items()}
    out, classes = self._read()
    index = {c: i for i, c in enumerate(classes)}
    return {s: self._generate_examples(values, [index[l] for l in labels])
            for s, (values, labels, _) in out.items()}

  def _generate_examples(self, values, labels):
    for i, (x, y) in enumerate(zip(values, labels)):
      yield i, {"series": x[:, None], "label": y}


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


class GunPoint(UCR, skip_registration=True):
  name, PROBLEM = "ucr_gunpoint", "GunPoint"


class ItalyPowerDemand(UCR, skip_registration=True):
  name, PROBLEM = "ucr_italy_power_demand", "ItalyPowerDemand"


class ArrowHead(UCR, skip_registration=True):
  name, PROBLEM = "ucr_arrowhead", "ArrowHead"


class OSULeaf(UCR, skip_registration=True):
  name, PROBLEM = "ucr_osuleaf", "OSULeaf"
