"""Transfer learning: what freezing leaves untouched, unfreezing on schedule, loading sources."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from cnnrnn import models
from cnnrnn import tasks
from cnnrnn import train
from cnnrnn import transfer
from cnnrnn.interop import torch_zoo
from cnnrnn.train import optim
from cnnrnn.train import runs
from cnnrnn.train import steps
from cnnrnn.train.state import TrainState
from configs import quickstart
from tests.helpers import override

# A conv_stack with BatchNorm: stages conv0 (+bn0), conv1 (+bn1), fc0, then the head.
MODEL = dict(features=(4, 8), dense=(8,), batch_norm=True, pool_every=1, num_classes=5)


def _cfg(**fields):
  cfg = transfer.default_config()
  cfg.source = "unused"
  return override(cfg, **fields)


def _optimizer_cfg(name="momentum", weight_decay=0.0):
  cfg = train.default_config().optimizer
  cfg.name = name
  cfg.learning_rate = 0.1
  cfg.weight_decay = weight_decay
  return cfg


def _setup(cfg, num_steps=4, optimizer="momentum", weight_decay=0.0, **model_kwargs):
  """Runs `num_steps` training steps of the conv_stack under `cfg`; returns the states."""
  model = models.create("conv_stack", **(MODEL | model_kwargs))
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randn(8, 8, 8, 3), jnp.float32),
           "label": jnp.asarray(rng.randint(0, 5, 8), jnp.int32)}
  variables = model.init(jax.random.key(0), batch["image"][:1], train=False)
  params = variables.pop("params")
  order = transfer.call_order(model, batch["image"][:1], train=False)
  tx, _ = transfer.make_optimizer(_optimizer_cfg(optimizer, weight_decay), cfg, params, order,
                                  100, optimizer_factory=optim.make_optimizer)
  wrapped = transfer.wrap_model(model, cfg)
  task = tasks.create("classification", num_classes=5)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                     opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(1)))
  step = jax.jit(steps.make_train_step(wrapped, task, tx))
  history = [state]
  for _ in range(num_steps):
    state, _ = step(state, batch)
    history.append(state)
  return history, step, batch


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _params_and_order(model, x):
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
  return params, transfer.call_order(model, x, train=False)


def test_stages_follow_the_model():
  params, order = _params_and_order(models.create("conv_stack", **MODEL), jnp.zeros((1, 8, 8, 3)))
  assert transfer.stages(params, order) == [["conv0", "bn0"], ["conv1", "bn1"], ["fc0"], ["head"]]
  params, order = _params_and_order(models.create("cifar_resnet20"), jnp.zeros((1, 32, 32, 3)))
  assert [s[0] for s in transfer.stages(params, order)] == [
      "stem", "stage1_block0", "stage2_block0", "stage3_block0", "head"]
  with pytest.raises(ValueError, match=r"transfer.head='classifier' is not a top-level .*stem"):
    transfer.stages(params, order, "classifier")
  vit = models.create("vit", patch_size=4, image_size=8, hidden_dim=6, depth=2, num_heads=2,
                      mlp_dim=8)
  params, order = _params_and_order(vit, jnp.zeros((1, 8, 8, 3)))
  assert transfer.stages(params, order) == [["cls_token", "pos_embed", "patch_embed"], ["block0"],
                                            ["block1"], ["norm"], ["head"]]


def test_linear_probe_leaves_the_backbone_and_its_statistics_bitwise_unchanged():
  history, _, _ = _setup(_cfg(strategy="linear_probe"))
  first, last = history[0], history[-1]
  before, after = _flat(first.params), _flat(last.params)
  for key in before:
    if key.startswith("head/"):
      assert not np.array_equal(before[key], after[key]), key
    else:
      np.testing.assert_array_equal(before[key], after[key], err_msg=key)
  stats_before, stats_after = _flat(first.model_state), _flat(last.model_state)
  assert stats_before and stats_before.keys() == stats_after.keys()
  for key in stats_before:
    np.testing.assert_array_equal(stats_before[key], stats_after[key], err_msg=key)
  # Optimizer state only for the head: momentum traces of its kernel and bias, nothing else.
  opt_leaves = [x for x in jax.tree.leaves(last.opt_state) if np.ndim(x) > 0]
  head = [np.shape(v) for k, v in before.items() if k.startswith("head/")]
  assert sorted(np.shape(x) for x in opt_leaves) == sorted(head)


def _count_convs(jaxpr) -> int:
  return str(jaxpr).count("conv_general_dilated")


def test_linear_probe_computes_no_backbone_gradient():
  probe_states, probe_step, batch = _setup(_cfg(strategy="linear_probe"), num_steps=0)
  full_states, full_step, _ = _setup(_cfg(strategy="full"), num_steps=0)
  probe = jax.make_jaxpr(probe_step)(probe_states[0], batch)
  full = jax.make_jaxpr(full_step)(full_states[0], batch)
  # Two convolutions forward; full fine-tuning adds their weight gradients and one input
  # gradient (conv1 -> conv0), the probe nothing.
  assert (_count_convs(probe), _count_convs(full)) == (2, 5)


@pytest.mark.slow
def test_full_fine_tuning_scales_the_backbone_learning_rate():
  # Plain SGD: each group's update is -lr * scale * gradient, so the ratio shows the scale.
  one, _, _ = _setup(_cfg(strategy="full", backbone_lr_scale=1.0), 1, optimizer="sgd")
  tenth, _, _ = _setup(_cfg(strategy="full", backbone_lr_scale=0.1), 1, optimizer="sgd")
  start = _flat(one[0].params)
  moved = lambda h, k: _flat(h[1].params)[k] - start[k]
  np.testing.assert_allclose(moved(tenth, "conv0/kernel"), 0.1 * moved(one, "conv0/kernel"),
                             rtol=1e-4, atol=1e-7)  # params rounded at their own size
  np.testing.assert_array_equal(moved(tenth, "head/kernel"), moved(one, "head/kernel"))


def test_discriminative_rates_decay_per_stage_from_the_head():
  params, order = _params_and_order(models.create("conv_stack", **MODEL), jnp.zeros((1, 8, 8, 3)))
  cfg = _cfg(strategy="discriminative", stage_lr_decay=0.5)
  labels, scales = transfer.group_labels(params, order, cfg)
  assert {k: v["kernel"] for k, v in labels.items() if "kernel" in v} == {
      "conv0": "stage_3", "conv1": "stage_2", "fc0": "stage_1", "head": "stage_0"}
  assert labels["bn1"]["scale"] == "stage_2"
  assert scales == {"stage_0": 1.0, "stage_1": 0.5, "stage_2": 0.25, "stage_3": 0.125}


@pytest.mark.parametrize("optimizer", ["momentum", "adamw"])
@pytest.mark.slow
def test_progressive_unfreezing_follows_the_schedule(optimizer):
  # Weight decay too must not move a stage before its step.
  history, _, _ = _setup(_cfg(strategy="progressive", unfreeze_steps=(1, 3)), num_steps=5,
                         optimizer=optimizer, weight_decay=0.1)
  moved = lambda name: [not np.array_equal(_flat(a.params)[name], _flat(b.params)[name])
                        for a, b in zip(history, history[1:])]
  assert moved("head/kernel") == [True] * 5
  assert moved("fc0/kernel") == [False, True, True, True, True]  # unfrozen at step 1
  assert moved("conv1/kernel") == [False, False, False, True, True]  # unfrozen at step 3
  assert moved("conv0/kernel") == [False] * 5  # no step given for it: frozen throughout
  # ... and, as for a linear probe, without optimizer state.
  conv0 = [x for x in jax.tree.leaves(history[-1].opt_state) if np.shape(x) == (3, 3, 3, 4)]
  assert not conv0


def test_bad_transfer_fields():
  with pytest.raises(ValueError, match=r"transfer.strategy='probe'; allowed: full, linear_probe"):
    transfer.validate(_cfg(strategy="probe"))
  with pytest.raises(ValueError, match=r"'progressive' needs transfer.unfreeze_steps"):
    transfer.validate(_cfg(strategy="progressive"))
  with pytest.raises(ValueError, match=r"transfer.unfreeze_steps=\(5, 2\); allowed: increasing"):
    transfer.validate(_cfg(strategy="progressive", unfreeze_steps=(5, 2)))


def _quick(data_dir, workdir_steps=6, **overrides):
  c = quickstart.get_config()
  c.mesh = (("data", 1),)
  c.dataset.data_dir = data_dir
  c.progress_bar = False
  c.num_train_steps = workdir_steps
  c.log_every_steps = 3
  c.checkpoint.async_save = False
  c.model.features = (8, 16)
  c.model.dense = (16,)
  c.model.batch_norm = True
  return override(c, **overrides)


@pytest.mark.slow
def test_a_cnnrnn_workdir_starts_a_linear_probe(data_dir, tmp_path):
  source = tmp_path / "pretrained"
  train.train_and_evaluate(_quick(data_dir), str(source))
  pretrained = runs.load_variables(str(source))
  assert set(pretrained) == {"params", "batch_stats"}  # nothing of the optimizer
  target = tmp_path / "probe"
  train.train_and_evaluate(
      _quick(data_dir, **{"transfer.source": str(source), "transfer.strategy": "linear_probe",
                          "transfer.keep_head": True, "optimizer.name": "sgd"}), str(target))
  tuned = runs.load_variables(str(target))
  for collection in ("params", "batch_stats"):
    a, b = _flat(pretrained[collection]), _flat(tuned[collection])
    for key in a:
      if not key.startswith("head/"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert not np.array_equal(_flat(pretrained["params"])["head/kernel"],
                            _flat(tuned["params"])["head/kernel"])


@pytest.mark.slow
def test_a_workdir_loads_into_a_model_with_a_new_head(data_dir, tmp_path):
  train.train_and_evaluate(_quick(data_dir), str(tmp_path))
  source = runs.load_variables(str(tmp_path))
  src = _flat(source["params"])

  def load(num_classes, keep_head):
    model = models.create("conv_stack", features=(8, 16), dense=(16,), batch_norm=True,
                          num_classes=num_classes)
    fresh = jax.device_get(model.init(jax.random.key(3), jnp.zeros((1, 8, 8, 1)), train=False))
    variables = transfer.adapt(source, fresh, keep_head=keep_head)
    assert model.apply(variables, jnp.zeros((2, 8, 8, 1)), train=False).shape == (2, num_classes)
    got = _flat(variables["params"])
    np.testing.assert_array_equal(got["conv1/kernel"], src["conv1/kernel"])
    return got["head/kernel"], _flat(fresh["params"])["head/kernel"]

  for num_classes, keep_head in [(3, True), (3, False), (10, False)]:  # a fresh head
    head, fresh_head = load(num_classes, keep_head)
    assert head.shape == (16, num_classes)
    np.testing.assert_array_equal(head, fresh_head)
  head, _ = load(10, True)  # the same 10 classes: the trained head, when asked for
  np.testing.assert_array_equal(head, src["head/kernel"])


@pytest.mark.slow
def test_bad_sources_fail_clearly(tmp_path):
  cfg = dict(features=(4, 8), dense=(8,), batch_norm=True, num_classes=5)
  with pytest.raises(FileNotFoundError, match=r"transfer.source='/no/such.pth': no such file"):
    transfer.load_source("/no/such.pth", "cifar_resnet20", {})
  with pytest.raises(FileNotFoundError, match=r"no such workdir or file"):
    transfer.load_source(str(tmp_path / "missing"), "cifar_resnet20", {})
  with pytest.raises(ValueError, match=r"directory without checkpoints"):
    transfer.load_source(str(tmp_path), "cifar_resnet20", {},
                         workdir_loader=runs.load_variables)
  with pytest.raises(ValueError, match=r"is a workdir, but no workdir_loader was given"):
    transfer.load_source(str(tmp_path), "cifar_resnet20", {})
  # A state dict of another model: every mismatching key is named.
  resnet = models.create("cifar_resnet20")
  sd = torch_zoo.to_torch("cifar_resnet20", jax.device_get(
      resnet.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)))
  torch_zoo.save_state_dict(tmp_path / "resnet20.safetensors", sd)
  with pytest.raises(ValueError, match=r"does not fit transfer.source_model='cifar_resnet32'.*"
                                       r"missing keys \[layer1.3"):
    transfer.load_source(str(tmp_path / "resnet20.safetensors"), "cifar_resnet32", {})
  # Variables of another architecture, and a head name the model does not have.
  model = models.create("conv_stack", **cfg)
  fresh = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False))
  source = transfer.load_source(str(tmp_path / "resnet20.safetensors"), "cifar_resnet20", {})
  with pytest.raises(ValueError, match=r"pretrained \w+ do not fit the model .*missing "
                                       r"\['bn0/"):
    transfer.adapt(source, fresh)
  with pytest.raises(ValueError, match=r"transfer.head='fc' is not a top-level module"):
    transfer.adapt(fresh, fresh, head="fc")
  wider = models.create("conv_stack", **(cfg | {"features": (4, 16)}))
  other = jax.device_get(wider.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False))
  with pytest.raises(ValueError, match=r"pretrained batch_stats/bn1/mean has shape \(16,\), the "
                                       r"model \(8,\)|pretrained params/bn1/bias has shape"):
    transfer.adapt(other, fresh)


def test_published_weights_offline_name_the_file(monkeypatch):
  import torch  # pylint: disable=g-import-not-at-top
  import urllib.error  # pylint: disable=g-import-not-at-top

  def offline(url, **kwargs):
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
  with pytest.raises(OSError, match=r"transfer.source='torchvision:ResNet18_Weights.IMAGENET1K_V1'"
                                    r": cannot download .*resnet18-f37072fd.pth.* Offline, put "
                                    r"that file into .*checkpoints/"):
    transfer.load_source("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet18", {})


@pytest.mark.slow
def test_a_timm_vit_file_loads_at_another_resolution_with_a_new_head(tmp_path):
  timm = pytest.importorskip("timm")
  from timm.layers import resample_abs_pos_embed  # pylint: disable=g-import-not-at-top

  # A 2-block timm ViT-Ti/16 for 224x224 and 1000 classes -> 32x32 images and 10 classes.
  tmodel = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
  state_dict = tmodel.state_dict()
  path = tmp_path / "vit.safetensors"
  torch_zoo.save_state_dict(path, state_dict)
  kwargs = dict(depth=2, image_size=32, num_classes=10)
  source = transfer.load_source(str(path), "vit_ti16", kwargs)
  model = models.create("vit_ti16", **kwargs)
  fresh = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  variables = transfer.adapt(source, fresh, resample=transfer.resample_rules())
  params = variables["params"]
  want_pos = resample_abs_pos_embed(state_dict["pos_embed"], (2, 2), num_prefix_tokens=1).numpy()
  np.testing.assert_allclose(params["pos_embed"], want_pos, atol=2e-6)
  np.testing.assert_array_equal(params["block1"]["mlp"]["fc2"]["bias"],
                                state_dict["blocks.1.mlp.fc2.bias"].numpy())
  assert params["head"]["kernel"].shape == (192, 10)
  np.testing.assert_array_equal(params["head"]["kernel"], fresh["params"]["head"]["kernel"])
  assert model.apply(variables, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


@pytest.mark.parametrize("field,value,match", [
    ("transfer.strategy", "probe", r"transfer.strategy='probe'; allowed: full, linear_probe"),
    ("transfer.stage_lr_decay", 2.0, r"transfer.stage_lr_decay=2.0; allowed: in \[0, 1\]"),
    ("transfer.source", "", r"transfer.strategy='linear_probe' needs transfer.source"),
])
def test_bad_transfer_config_fails_before_compiling(data_dir, tmp_path, monkeypatch, field, value,
                                                    match):
  def no_compile(*args, **kwargs):
    raise AssertionError("jax.jit was called before the config error was reported")

  monkeypatch.setattr(jax, "jit", no_compile)
  c = _quick(data_dir, **{"transfer.source": str(tmp_path), "transfer.strategy": "linear_probe",
                          field: value})
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(c, str(tmp_path / "run"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5])
def test_backbone_lr_scale_must_be_finite_and_non_negative(value):
  cfg = transfer.default_config()
  cfg.backbone_lr_scale = value
  with pytest.raises(ValueError, match=r"transfer.backbone_lr_scale=.*allowed: a finite number >= 0"):
    transfer.validate(cfg)


def test_a_bad_source_is_named_before_any_data_or_compilation(tmp_path, monkeypatch):
  """Unreadable files and pickled objects: one line naming the source, never an unsafe load."""
  import torch  # pylint: disable=g-import-not-at-top

  from cnnrnn import data  # pylint: disable=g-import-not-at-top

  (tmp_path / "garbage.pth").write_text("not a checkpoint")
  torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")
  expected = {"garbage.pth": r"torch cannot read it",
              "whole.pth": r"pickled Python objects \(torch.nn.modules.linear.Linear\)"}

  def forbidden(*args, **kwargs):
    raise AssertionError("data was read or a function compiled before the source was checked")

  monkeypatch.setattr(jax, "jit", forbidden)
  monkeypatch.setattr(data, "load", forbidden)
  for name, reason in expected.items():
    source = str(tmp_path / name)
    with pytest.raises(ValueError) as e:
      train.train_and_evaluate(_quick(str(tmp_path / "tfds"), **{"transfer.source": source}),
                               str(tmp_path / name.replace(".", "_")))
    message = str(e.value)
    assert re.search(rf"transfer.source='{re.escape(source)}': .*{reason}", message), message
    assert "\n" not in message and "weights_only=False" not in message
