"""Weight conversion to and from torchvision: parity in eval mode, exact round trips, errors."""

import functools
import jax
import numpy as np
import pytest

from cnnrnn import accel
from cnnrnn import models
from cnnrnn.interop import torch_zoo

torch = pytest.importorskip("torch")
tv_models = pytest.importorskip("torchvision.models")


@functools.cache
def _random_torchvision(name, num_classes=1000):
  """A torchvision model in eval mode with random weights and random BatchNorm statistics."""
  torch.manual_seed(0)
  model = getattr(tv_models, name)(num_classes=num_classes)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.normal_(1.0, 0.2)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return model.eval()


@pytest.mark.parametrize("name,size,num_classes", [
    ("alexnet", 64, 1000),
    ("alexnet", 100, 10),  # 2x2 map -> 6x6: adaptive pooling repeats inputs
    ("vgg11_bn", 32, 1000),
    ("vgg11", 80, 10),  # 2x2 map -> 7x7
    ("resnet18", 64, 1000),
    ("resnet50", 64, 1000),
])
@pytest.mark.parametrize("mode", ["xla", "cpu_native"])
@pytest.mark.slow
def test_logits_match_torchvision(name, size, num_classes, mode):
  tmodel = _random_torchvision(name, num_classes)
  x = np.random.RandomState(1).randn(2, 3, size, size).astype(np.float32)
  with torch.no_grad():
    want = tmodel(torch.from_numpy(x)).numpy()
  variables = torch_zoo.from_torch(name, tmodel.state_dict(), num_classes=num_classes)
  model = models.create(name, num_classes=num_classes)
  apply = accel.accelerate(lambda v, x: model.apply(v, x, train=False), mode)
  got = jax.jit(apply)(variables, x.transpose(0, 2, 3, 1))
  assert np.abs(np.asarray(got) - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn", "resnet18", "resnet50"])
@pytest.mark.slow
def test_round_trip_is_exact(name):
  state_dict = _random_torchvision(name).state_dict()
  variables = torch_zoo.from_torch(name, state_dict)
  back = torch_zoo.to_torch(name, variables)
  assert set(back) == set(state_dict)
  for key, value in state_dict.items():
    assert back[key].dtype == value.numpy().dtype, key
    np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
  tensors = torch_zoo.to_torch(name, variables, tensors=True)
  _random_torchvision(name).load_state_dict(tensors)  # strict: every key, every shape


@pytest.mark.parametrize(
    "name", [n for n in torch_zoo.names() if not n.startswith(("cifar", "vit"))])
def test_keys_and_shapes_equal_torchvision(name):
  with torch.device("meta"):  # shapes only, nothing allocated
    want = {k: tuple(v.shape) for k, v in getattr(tv_models, name)().state_dict().items()}
  abstract, entries, extras = torch_zoo._prepare(name, {})  # pylint: disable=protected-access
  got = {k: tuple(v.shape) for k, v in extras.items()}
  for e in entries:
    leaf = jax.ShapeDtypeStruct(torch_zoo._leaf(abstract, e).shape, np.float32)  # pylint: disable=protected-access
    got[e.torch_key] = tuple(jax.eval_shape(e.to_torch, leaf).shape)
  assert got == want


@pytest.mark.parametrize("name", [n for n in torch_zoo.names() if n.startswith("cifar")])
def test_cifar_round_trip_is_exact(name):
  model = models.create(name)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  rng = np.random.RandomState(0)
  variables = jax.tree.map(lambda a: rng.randn(*a.shape).astype(a.dtype), abstract)
  again = torch_zoo.from_torch(name, torch_zoo.to_torch(name, variables))
  assert jax.tree.all(jax.tree.map(np.array_equal, again, variables))


def test_cifar_resnet_uses_torchvision_style_names():
  model = models.create("cifar_resnet20")
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  keys = torch_zoo.to_torch("cifar_resnet20", variables)
  assert {"conv1.weight", "bn1.running_var", "layer3.2.bn2.num_batches_tracked",
          "fc.weight"} <= set(keys)
  assert keys["layer2.0.conv1.weight"].shape == (32, 16, 3, 3)


def test_to_torch_takes_the_shapes_from_the_variables():
  # A 37-class ResNet converts without num_classes=37 passed again.
  tmodel = _random_torchvision("resnet18", 37)
  variables = torch_zoo.from_torch("resnet18", tmodel.state_dict(), num_classes=37)
  back = torch_zoo.to_torch("resnet18", variables)
  assert back["fc.weight"].shape == (37, 512) and back["fc.bias"].shape == (37,)
  for key, value in tmodel.state_dict().items():
    np.testing.assert_array_equal(back[key], value.numpy())


def test_wrong_shape_names_the_key():
  state_dict = _random_torchvision("resnet18").state_dict()
  state_dict["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
  with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight: shape \(128, 64, 5, 5\)"):
    torch_zoo.from_torch("resnet18", state_dict)


def test_wrong_num_classes_is_explained():
  state_dict = _random_torchvision("resnet18").state_dict()
  with pytest.raises(ValueError, match=r"fc\.(weight|bias): shape .*num_classes"):
    torch_zoo.from_torch("resnet18", state_dict, num_classes=10)


def test_missing_and_unexpected_keys_are_listed():
  state_dict = dict(_random_torchvision("resnet18").state_dict())
  del state_dict["layer1.1.bn2.running_mean"]
  state_dict["layer5.0.conv1.weight"] = torch.zeros(1)
  with pytest.raises(ValueError, match=r"missing keys \[layer1\.1\.bn2\.running_mean\].*"
                                       r"unexpected keys \[layer5\.0\.conv1\.weight\]"):
    torch_zoo.from_torch("resnet18", state_dict)


def test_num_batches_tracked_is_optional_on_import():
  state_dict = {k: v for k, v in _random_torchvision("resnet18").state_dict().items()
                if not k.endswith("num_batches_tracked")}
  variables = torch_zoo.from_torch("resnet18", state_dict)
  back = torch_zoo.to_torch("resnet18", variables, num_batches_tracked=7)
  assert int(back["bn1.num_batches_tracked"]) == 7


def test_to_torch_rejects_variables_of_another_model():
  variables = torch_zoo.from_torch("resnet18", _random_torchvision("resnet18").state_dict())
  with pytest.raises(ValueError, match="do not fit 'resnet34'"):
    torch_zoo.to_torch("resnet34", variables)


def test_unknown_name():
  with pytest.raises(ValueError, match="convertible: alexnet"):
    torch_zoo.from_torch("lenet6", {})


@pytest.mark.slow
def test_load_pth_and_safetensors(tmp_path):
  state_dict = _random_torchvision("resnet18").state_dict()
  torch.save(state_dict, tmp_path / "w.pth")
  from_pth = torch_zoo.load_state_dict(tmp_path / "w.pth")
  variables = torch_zoo.from_torch("resnet18", from_pth)
  torch_zoo.save_state_dict(tmp_path / "w.safetensors", torch_zoo.to_torch("resnet18", variables))
  from_st = torch_zoo.load_state_dict(tmp_path / "w.safetensors")
  assert set(from_st) == set(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(from_st[key], value.numpy(), err_msg=key)
  torch.save({"model": state_dict, "epoch": 3}, tmp_path / "ckpt.pth")
  with pytest.raises(ValueError, match="does not hold a state dict"):
    torch_zoo.load_state_dict(tmp_path / "ckpt.pth")
