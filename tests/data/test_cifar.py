import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from cnnrnn import data
from cnnrnn.data.builders.cifar import CIFAR10_CLASSES


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _records(rng, n):
  labels = rng.integers(0, 10, n).astype(np.uint8)
  chw = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
  raw = np.concatenate([labels[:, None], chw.reshape(n, -1)], axis=1).tobytes()
  return raw, labels, chw.transpose(0, 2, 3, 1)


def test_cifar10_binary_archive(tmp_path):
  rng = np.random.default_rng(0)
  manual = tmp_path / "manual"
  manual.mkdir()
  expected = {}
  with tarfile.open(manual / "cifar-10-binary.tar.gz", "w:gz") as tar:
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
      raw, labels, images = _records(rng, 3)
      expected[name] = (labels, images)
      _add(tar, f"cifar-10-batches-bin/{name}", raw)
  ds = data.load("cifar10", str(tmp_path / "tfds"), str(manual))
  train, test = ds.split("train"), ds.split("test")
  assert (len(train), len(test), ds.num_classes) == (15, 3, 10)
  got = {(int(test[i]["label"]), test[i]["image"].tobytes()) for i in range(3)}
  labels, images = expected["test_batch.bin"]
  assert got == {(int(l), im.tobytes()) for l, im in zip(labels, images)}


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_image_folder(tmp_path, as_tar):
  rng = np.random.default_rng(1)
  manual = tmp_path / "manual"
  manual.mkdir()
  files = {}
  for split, n in (("train", 4), ("test", 2)):
    for i in range(n):
      cls = CIFAR10_CLASSES[(3 * i + len(split)) % 10]
      image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
      buf = io.BytesIO()
      Image.fromarray(image).save(buf, format="PNG")  # Lossless, so pixels compare exactly.
      files[f"{split}/{cls}/{i:04d}.png"] = (buf.getvalue(), CIFAR10_CLASSES.index(cls), image)
  if as_tar:
    with tarfile.open(manual / "images.tar", "w") as tar:
      for name, (payload, _, _) in files.items():
        _add(tar, name, payload)
  else:
    for name, (payload, _, _) in files.items():
      (manual / name).parent.mkdir(parents=True, exist_ok=True)
      (manual / name).write_bytes(payload)
  ds = data.load("cifar10_folder", str(tmp_path / "tfds"), str(manual))
  train = ds.split("train")
  assert len(train) == 4 and len(ds.split("test")) == 2
  got = sorted((int(train[i]["label"]), train[i]["image"].tobytes()) for i in range(4))
  want = sorted((label, image.tobytes()) for name, (_, label, image) in files.items()
                if name.startswith("train/"))
  assert got == want


def test_cifar10_folder_without_manual_dir_explains(tmp_path):
  with pytest.raises(FileNotFoundError, match="train/<class>"):
    data.load("cifar10_folder", str(tmp_path / "tfds"))
