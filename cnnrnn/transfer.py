"""Transfer learning: start from pretrained weights, replace the head, freeze and unfreeze.

The trainer uses this module when `config.transfer.source` is set (fields in
`cnnrnn.train.defaults`):

    transfer.source       a cnnrnn workdir (its newest Orbax checkpoint: params and
                          batch_stats only), a torch state dict file (`.pth`/`.pt`/`.bin`,
                          read with `torch.load(weights_only=True)`, or `.safetensors`), or
                          published weights by name: "timm:vit_base_patch16_224.augreg_in21k",
                          "torchvision:ResNet50_Weights.IMAGENET1K_V2" (downloaded once into
                          the torch hub cache; offline, the error names the file to put where).
    transfer.source_model the cnnrnn registry name whose torch layout the state dict has
                          (default: model.name; e.g. "vit_b16" for a timm ViT-B/16).
    transfer.target_module  load the source into this top-level module of the model instead
                          of the whole model (e.g. "encoder": an image model's workdir into
                          `video_classifier`'s frame encoder), the source's head dropped;
                          the rest of the model keeps its fresh initialisation.
    transfer.head         the top-level module that is the head (default "head"), fresh
                          (as the model initialises it) unless `keep_head`.
    transfer.keep_head    keep the source's head when its shapes fit (the same classes,
                          e.g. fine-tuning at a higher resolution); default False.
    transfer.strategy     "full" | "linear_probe" | "discriminative" | "progressive".
    transfer.backbone_lr_scale  "full": the backbone's learning rate is this times the head's.
    transfer.stage_lr_decay     "discriminative": the stage k places below the head learns at
                          stage_lr_decay ** k times the head's rate (ULMFiT: 1 / 2.6).
    transfer.unfreeze_steps     "progressive": the head trains alone until the first step here;
                          at each step listed, the next stage down unfreezes.

Stages are the model's top-level modules in creation order (input to output) grouped by
`STAGE_RULES` (ResNet: stem, stage1, stage2, ...; ViT: embedding, block0, block1, ...,
norm; conv_stack: conv0 (+bn0), conv1, ..., fc0), then the head.

How freezing works:
- Frozen parameters are labelled "frozen" in an `optax.multi_transform` whose transform for
  them is `optax.set_to_zero()`: they hold no optimizer state and never move.
- A linear probe runs the whole model in inference mode (`train=False`: BatchNorm normalises
  with its running statistics and does not update them; dropout is off, also in front of
  the head) and puts `jax.lax.stop_gradient` on every backbone parameter, so reverse mode
  computes no backbone gradient at all, only the head's (the test checks the jaxpr).
- Progressive unfreezing keeps one jitted step for the whole run: every stage has its
  optimizer state from the start, and until its step a stage's gradient (weight decay
  included) is zeroed before momentum or Adam's moments see it and its update is zeroed
  after; the learning-rate schedule stays global. (Adam's step count runs on meanwhile, so
  its bias correction is spent when the stage unfreezes: its first updates are smaller.)
  Gradients of frozen stages are still computed. Their BatchNorm layers run in training
  mode throughout (as fast.ai's `freeze` with `train_bn`).
- Learning-rate multipliers scale each group's update after the optimizer, which equals
  scaling its learning rate for SGD, momentum, Adam and AdamW alike; gradient clipping stays
  global (over all groups).
"""

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from cnnrnn.interop import torch_zoo
from cnnrnn.train import optim

STRATEGIES = ("full", "linear_probe", "discriminative", "progressive")
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HUBS = ("timm", "torchvision")

# Top-level module name -> stage name; names no rule matches are their own stage.
STAGE_RULES: tuple[tuple[str, str], ...] = (
    (r"(stage\d+)_block\d+", r"\1"),        # ResNet
    (r"(?:conv|bn)(\d+)", r"conv\1"),        # conv_stack, LeNet: a conv and its BatchNorm
    (r"patch_embed|cls_token|pos_embed", "embedding"),  # ViT
)


def default_config() -> ml_collections.ConfigDict:
  """The `transfer` block of the experiment config (no source: train from scratch)."""
  c = ml_collections.ConfigDict()
  c.source = ""
  c.source_model = ""
  c.target_module = ""
  c.head = "head"
  c.keep_head = False
  c.strategy = "full"
  c.backbone_lr_scale = 1.0
  c.stage_lr_decay = 1.0 / 2.6
  c.unfreeze_steps = ()
  return c


def validate(cfg) -> None:
  """Raises ValueError naming the bad `transfer.*` field and the allowed values."""
  if cfg.strategy not in STRATEGIES:
    raise ValueError(f"transfer.strategy={cfg.strategy!r}; allowed: {', '.join(STRATEGIES)}")
  if cfg.backbone_lr_scale < 0:
    raise ValueError(f"transfer.backbone_lr_scale={cfg.backbone_lr_scale}; allowed: >= 0")
  if not 0 <= cfg.stage_lr_decay <= 1:
    raise ValueError(f"transfer.stage_lr_decay={cfg.stage_lr_decay}; allowed: in [0, 1]")
  steps = list(cfg.unfreeze_steps or ())
  if cfg.strategy == "progressive" and not steps:
    raise ValueError("transfer.strategy='progressive' needs transfer.unfreeze_steps, e.g. "
                     "(500, 1000, 1500): the step at which each next stage unfreezes")
  if any(int(s) < 0 for s in steps) or steps != sorted(steps):
    raise ValueError(f"transfer.unfreeze_steps={tuple(steps)}; allowed: increasing steps >= 0")


# ---------------------------------------------------------------------------------------
# Stages and labels.


def stage_name(module: str) -> str:
  """The stage a top-level module belongs to (see `STAGE_RULES`)."""
  for pattern, repl in STAGE_RULES:
    if re.fullmatch(pattern, module):
      return re.sub(pattern, repl, module)
  return module


def call_order(model: nn.Module, *args, **kwargs) -> list[str]:
  """The model's top-level submodules in the order its `init(rng, *args, **kwargs)` calls
  them (shapes only, nothing computed). Pytrees sort dict keys, so a params tree alone does
  not say which layer comes first ("head" < "stem")."""
  order: list[str] = []

  def record(next_fun, call_args, call_kwargs, context):
    scope = context.module.scope
    if scope is not None and len(scope.path) == 1 and scope.path[0] not in order:
      order.append(scope.path[0])
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
  return order


def stages(params: Mapping[str, Any], order: list[str], head: str = "head") -> list[list[str]]:
  """The model's stages from input to output, each a list of top-level names; the head last.

  Args:
    params: the "params" collection (arrays or ShapeDtypeStructs).
    order: top-level module names from input to output (`call_order`); parameters of the
      root module itself (e.g. ViT's position embeddings) count as the first.
    head: the head's top-level name.

  Raises:
    ValueError: `head` is not a top-level name of `params`.
  """
  check_head(params, head)
  rank = {name: i for i, name in enumerate(order)}
  groups: dict[str, list[str]] = {}
  for name in sorted(params, key=lambda n: (rank.get(n, -1), n)):
    if name != head:
      groups.setdefault(stage_name(name), []).append(name)
  return [*groups.values(), [head]]


def check_head(params: Mapping[str, Any], head: str) -> None:
  """Raises a ValueError naming the model's top-level modules unless `head` is one of them."""
  if head not in params:
    raise ValueError(f"transfer.head={head!r} is not a top-level module of the model; its "
                     f"top-level modules: {', '.join(params)}")


def _labels_by_name(params: Mapping[str, Any], names_to_label: Mapping[str, str]):
  return {name: jax.tree.map(lambda _, l=names_to_label[name]: l, subtree)
          for name, subtree in params.items()}


def group_labels(params: Mapping[str, Any], order: list[str], cfg) -> tuple[dict, dict[str, float]]:
  """Per-parameter group labels and each group's learning-rate multiplier for `cfg.strategy`.

  Returns:
    (labels: a tree like `params` of group names, {group name: multiplier}); the group
    "frozen" (multiplier 0) gets `optax.set_to_zero()`.
  """
  groups = stages(params, order, cfg.head)
  by_name: dict[str, str] = {}
  scales: dict[str, float] = {}
  for depth, names in enumerate(reversed(groups)):  # depth 0: the head
    if cfg.strategy == "linear_probe":
      group, scale = ("head", 1.0) if depth == 0 else ("frozen", 0.0)
    elif cfg.strategy == "full":
      group, scale = ("head", 1.0) if depth == 0 else ("backbone", float(cfg.backbone_lr_scale))
    elif cfg.strategy == "discriminative":
      group, scale = f"stage_{depth}", float(cfg.stage_lr_decay) ** depth
    else:  # progressive: one group per stage, each with its own unfreezing step
      never = depth > len(tuple(cfg.unfreeze_steps))
      group, scale = ("frozen", 0.0) if never else (f"stage_{depth}", 1.0)
    if scale == 0.0:
      group = "frozen"
    scales[group] = scale
    by_name.update({n: group for n in names})
  return _labels_by_name(params, by_name), scales


def unfreeze_step(group: str, cfg) -> int:
  """"progressive": the first step whose update moves `group` ("stage_k", k stages below
  the head; stages below the last unfreezing step are in the group "frozen")."""
  depth = int(group.split("_")[1])
  return int(tuple(cfg.unfreeze_steps)[depth - 1]) if depth else 0


def _zero_before(step: int) -> optax.GradientTransformation:
  """Zeroes what passes through (gradients or updates) until `step`, counted in updates."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    keep = state.count >= step
    updates = jax.tree.map(lambda g: jnp.where(keep, g, jnp.zeros_like(g)), updates)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def make_optimizer(optimizer_cfg, cfg, params, order: list[str], total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of `optimizer_cfg` (see `cnnrnn.train.optim`) split into `cfg`'s groups.

  Args:
    optimizer_cfg: the `optimizer` config block.
    cfg: the `transfer` config block.
    params: the model's params (arrays or ShapeDtypeStructs), for their labels.
    order: top-level module names from input to output (`call_order`).
    total_steps: length of the run, for the schedule.

  Returns:
    (transformation, the head's learning-rate schedule).
  """
  validate(cfg)
  inner_cfg = ml_collections.ConfigDict(
      optimizer_cfg.to_dict() if hasattr(optimizer_cfg, "to_dict") else dict(optimizer_cfg))
  inner_cfg.clip_norm = 0.0  # Clipping is global, outside the groups.
  labels, scales = group_labels(params, order, cfg)
  # A frozen-then-unfrozen group must not move before its step, weight decay included: with
  # coupled decay (all but adamw) the decay term is added before the gradient gate, so the
  # momentum stays zero too; adamw's decoupled decay is stopped by the gate on the updates.
  decay = float(optimizer_cfg.get("weight_decay") or 0.0)
  coupled_decay = decay if optimizer_cfg.name != "adamw" else 0.0
  gated_cfg = ml_collections.ConfigDict(inner_cfg.to_dict())
  if coupled_decay:
    gated_cfg.weight_decay = 0.0
  transforms = {}
  for group, scale in scales.items():
    if group == "frozen":
      transforms[group] = optax.set_to_zero()
      continue
    start = unfreeze_step(group, cfg) if cfg.strategy == "progressive" else 0
    inner, _ = optim.make_optimizer(gated_cfg if start else inner_cfg, total_steps)
    parts = [inner] if scale == 1.0 else [inner, optax.scale(scale)]
    if start:
      parts = [_zero_before(start), *parts, _zero_before(start)]
      if coupled_decay:
        parts.insert(0, optax.add_decayed_weights(coupled_decay))
    transforms[group] = optax.chain(*parts)
  tx = optax.multi_transform(transforms, labels)
  clip = optimizer_cfg.get("clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx, optim.make_schedule(optimizer_cfg, total_steps)


# ---------------------------------------------------------------------------------------
# The linear probe's model.


class LinearProbe:
  """A model whose backbone is frozen: every call runs in inference mode, backbone
  parameters under `stop_gradient`, mutable collections returned unchanged.

  It offers what the trainer and `cnnrnn.train.steps` use of a Flax module (`init`, `apply`,
  and the wrapped module's attributes), so the same jitted steps train it.

  Args:
    model: the Flax module.
    head: its head's top-level name.
  """

  def __init__(self, model: nn.Module, head: str = "head"):
    self.model = model
    self.head = head

  def __getattr__(self, name):
    return getattr(self.model, name)

  def init(self, *args, **kwargs):
    return self.model.init(*args, **kwargs)

  def apply(self, variables, *args, train: bool = False, mutable=False, **kwargs):
    del train  # Always inference mode: BatchNorm uses (and keeps) its running statistics.
    params = variables["params"]
    check_head(params, self.head)
    params = {k: v if k == self.head else jax.tree.map(jax.lax.stop_gradient, v)
              for k, v in params.items()}
    outputs = self.model.apply({**variables, "params": params}, *args, train=False, **kwargs)
    if mutable:
      names = [mutable] if isinstance(mutable, str) else list(mutable)
      return outputs, {c: variables[c] for c in names if c in variables}
    return outputs


def wrap_model(model: nn.Module, cfg):
  """`model`, or its `LinearProbe` when `cfg.strategy` is "linear_probe"."""
  return LinearProbe(model, cfg.head) if cfg.strategy == "linear_probe" else model


# ---------------------------------------------------------------------------------------
# Pretrained sources.


def _newest_checkpoint(workdir: str) -> str:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
  if not steps:
    raise ValueError(f"transfer.source={workdir!r} is a directory without Orbax checkpoints "
                     f"(expected {ckpt_dir}/<step>/state); give a cnnrnn workdir or a state "
                     f"dict file ({', '.join(STATE_DICT_SUFFIXES)})")
  return os.path.join(ckpt_dir, str(max(steps)), "state")


def load_workdir(workdir: str) -> dict[str, Any]:
  """The params and model state (e.g. batch_stats) of a cnnrnn workdir's newest checkpoint,
  as host numpy arrays; the optimizer state is not read.

  Returns:
    `{"params": ..., **model_state}`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(_newest_checkpoint(workdir))
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    wanted = {"params": tree["params"], "model_state": tree.get("model_state") or {}}
    is_leaf = lambda m: hasattr(m, "shape")
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted,
                                is_leaf=is_leaf)
    item = jax.tree.map(lambda m: np.zeros((), m.dtype), wanted, is_leaf=is_leaf)
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return {"params": restored["params"], **(restored.get("model_state") or {})}


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


def load_source(source: str, source_model: str, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """Variables in cnnrnn layout from any pretrained source (see the module docstring).

  Args:
    source: a workdir, a state dict file, or "timm:NAME" / "torchvision:WEIGHTS".
    source_model: registry name that converts a torch state dict (`cnnrnn.interop.torch`).
    model_kwargs: the target model's keyword arguments; a torch source is converted with
      these, but with its own number of classes (and, for ViT, its own resolution).

  Raises:
    FileNotFoundError: `source` is a path that does not exist.
    ValueError: a source of an unknown kind, or a state dict that does not fit `source_model`.
  """
  hub = source.partition(":")[0]
  if hub in HUBS:
    state_dict = _hub_state_dict(source)
  elif os.path.isdir(source):
    return load_workdir(source)
  elif source.endswith(STATE_DICT_SUFFIXES):
    if not os.path.exists(source):
      raise FileNotFoundError(f"transfer.source={source!r}: no such file")
    state_dict = torch_zoo.load_state_dict(source)
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


@dataclasses.dataclass
class Plan:
  """What the trainer needs for a transfer run (built by `plan`)."""

  cfg: Any
  source_model: str
  model_kwargs: dict

  def wrap_model(self, model: nn.Module):
    return wrap_model(model, self.cfg)

  def make_optimizer(self, optimizer_cfg, model: nn.Module, init_args, init_kwargs,
                     total_steps: int):
    """`make_optimizer` for `model` called on `init_args`/`init_kwargs` (shapes only)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_args, train=False,
                                                 **init_kwargs))
    order = call_order(model, *init_args, train=False, **init_kwargs)
    return make_optimizer(optimizer_cfg, self.cfg, abstract["params"], order, total_steps)

  def initial_state(self, state, tx: optax.GradientTransformation, state_shardings):
    """`state` (freshly initialised) with the pretrained weights and a fresh optimizer state."""
    target = jax.device_get({"params": state.params, **state.model_state})
    source = load_source(self.cfg.source, self.source_model, self.model_kwargs)
    if self.cfg.get("target_module"):
      variables = adapt_into(source, target, self.cfg.target_module)
    else:
      variables = adapt(source, target, self.cfg.head, resample_rules(),
                        keep_head=self.cfg.get("keep_head", False))
    params = variables.pop("params")
    params = jax.device_put(params, state_shardings.params)
    model_state = jax.device_put(variables, state_shardings.model_state)
    opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
    return state.replace(params=params, model_state=model_state, opt_state=opt_state)


def plan(config, model_kwargs: Mapping[str, Any]) -> Plan | None:
  """The transfer plan of an experiment config, or None without `transfer.source`."""
  cfg = config.get("transfer")
  if cfg is None:
    return None
  if not cfg.get("source"):
    if cfg.get("strategy", "full") != "full" or cfg.get("keep_head"):
      raise ValueError(f"transfer.strategy={cfg.get('strategy')!r} needs transfer.source (a "
                       "workdir, a state dict file or timm:/torchvision:NAME); it is empty")
    return None
  validate(cfg)
  return Plan(cfg, cfg.get("source_model") or config.model.name, dict(model_kwargs))
