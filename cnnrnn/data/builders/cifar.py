"""CIFAR-10 from the official binary archive, and any image-folder copy of it (no TensorFlow)."""

import io
import os
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from cnnrnn.data.builders import base

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_RECORD = 1 + 32 * 32 * 3  # label byte, then 1024 red, 1024 green, 1024 blue bytes.


def _features():
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
      "label": tfds.features.ClassLabel(names=list(CIFAR10_CLASSES)),
  })


class Cifar10(base.RawFilesBuilder, skip_registration=True):
  """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test 32x32 RGB, from
  `cifar-10-binary.tar.gz`."""

  name = "cifar10"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Parsed from cifar-10-binary.tar.gz; images as raw uint8 tensors."}
  FILES = ("cifar-10-binary.tar.gz",)
  URL = "https://www.cs.toronto.edu/~kriz/"
  MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

  def _info(self):
    return self.dataset_info_from_configs(
        features=_features(), supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html")

  def _split_generators(self, dl_manager):
    archive = self._files(dl_manager)["cifar-10-binary.tar.gz"]
    train = [f"data_batch_{i}.bin" for i in range(1, 6)]
    return {"train": self._generate_examples(archive, train),
            "test": self._generate_examples(archive, ["test_batch.bin"])}

  def _generate_examples(self, archive, members):
    records = {}
    with tarfile.open(archive, "r:gz") as tar:
      for info in tar:
        if os.path.basename(info.name) in members:
          records[os.path.basename(info.name)] = tar.extractfile(info).read()
    missing = sorted(set(members) - set(records))
    if missing:
      raise ValueError(f"{archive} lacks {', '.join(missing)}: not the CIFAR-10 binary version")
    for member in members:
      data = np.frombuffer(records[member], np.uint8).reshape(-1, _RECORD)
      images = data[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
      for i, (label, image) in enumerate(zip(data[:, 0], images)):
        yield f"{member}_{i}", {"image": image, "label": int(label)}


class Cifar10Folder(base.RawFilesBuilder, skip_registration=True):
  """CIFAR-10 from an image-folder layout, `train/<class>/*.jpg|png` and
  `test/<class>/...`, extracted in `manual_dir` or inside one .tar there.

  Class indices follow CIFAR-10's order (which is alphabetical). JPEG copies are lossy:
  results on them are not comparable with published CIFAR-10 numbers to the decimal.
  """

  name = "cifar10_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Decoded from an image-folder copy; images as raw uint8 tensors."}
  MEAN, STD = Cifar10.MEAN, Cifar10.STD

  @classmethod
  def missing_files_message(cls, manual_dir: str | None) -> str:
    where = manual_dir or "<a folder>"
    return (f"Dataset {cls.name!r} is read from folders train/<class>/*.jpg|png and "
            f"test/<class>/*.jpg|png (or one .tar holding them) in {where}; pass that folder "
            f"as --config.dataset.manual_dir={where}. It cannot be downloaded: for the official "
            f"archive use dataset 'cifar10'.")

  def _info(self):
    return self.dataset_info_from_configs(
        features=_features(), supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html")

  def _split_generators(self, dl_manager):
    del dl_manager
    root = self._manual_dir_path
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(self.missing_files_message(root))
    tars = sorted(f for f in os.listdir(root) if f.endswith(".tar"))
    if os.path.isdir(os.path.join(root, "train")):
      source = root
    elif tars:
      source = os.path.join(root, tars[0])
    else:
      raise FileNotFoundError(f"{root} has neither train/ and test/ folders nor a .tar. "
                              + self.missing_files_message(root))
    return {split: self._generate_examples(source, split) for split in ("train", "test")}

  def _generate_examples(self, source, split):
    from PIL import Image  # pylint: disable=g-import-not-at-top

    for key, class_name, payload in _walk_image_folder(source, split):
      if class_name not in CIFAR10_CLASSES:
        raise ValueError(f"{source}: class folder {class_name!r} is not a CIFAR-10 class "
                         f"({', '.join(CIFAR10_CLASSES)})")
      image = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
      if image.shape != (32, 32, 3):
        raise ValueError(f"{key}: image of shape {image.shape}, expected (32, 32, 3)")
      yield key, {"image": image, "label": CIFAR10_CLASSES.index(class_name)}


def _walk_image_folder(source: str, split: str):
  """Yields (key, class name, file bytes) for `split`/<class>/<file> in a folder or .tar."""
  suffixes = (".jpg", ".jpeg", ".png")
  if os.path.isdir(source):
    split_dir = os.path.join(source, split)
    for class_name in sorted(os.listdir(split_dir)):
      for fname in sorted(os.listdir(os.path.join(split_dir, class_name))):
        if fname.lower().endswith(suffixes):
          with open(os.path.join(split_dir, class_name, fname), "rb") as f:
            yield f"{split}/{class_name}/{fname}", class_name, f.read()
    return
  with tarfile.open(source) as tar:
    for info in tar:
      parts = info.name.strip("./").split("/")
      if info.isfile() and len(parts) == 3 and parts[0] == split and parts[2].lower().endswith(suffixes):
        yield info.name, parts[1], tar.extractfile(info).read()
