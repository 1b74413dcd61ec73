"""Stages of a model (input to output, head last) and the optimizer groups of a strategy."""

from collections.abc import Mapping
import re
from typing import Any

import flax.linen as nn
import jax

# Top-level module name -> stage name; names no rule matches are their own stage.
STAGE_RULES: tuple[tuple[str, str], ...] = (
    (r"(stage\d+)_block\d+", r"\1"),        # ResNet
    (r"(?:conv|bn)(\d+)", r"conv\1"),        # conv_stack, LeNet: a conv and its BatchNorm
    (r"patch_embed|cls_token|pos_embed", "embedding"),  # ViT
)


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
