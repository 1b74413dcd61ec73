"""What the trainer calls: `plan(config, ...)` -> a `Plan` (wrap the model, make the
optimizer, load the pretrained weights into the fresh state)."""

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import optax

from cnnrnn.transfer import heads
from cnnrnn.transfer import sources
from cnnrnn.transfer import groups
from cnnrnn.transfer import strategies
from cnnrnn.transfer.config import validate


@dataclasses.dataclass
class Plan:
  """What the trainer needs for a transfer run (built by `plan`).

  Attributes:
    cfg: the `transfer` config block.
    source_model: the registry name a torch state dict is converted with.
    model_kwargs: the target model's keyword arguments.
    optimizer_factory: (optimizer config block, total steps) -> (transformation,
      schedule): the trainer's optimizer, made once per group.
    workdir_loader: workdir -> variables, for workdir sources (`cnnrnn.train.runs.load_variables`).
  """

  cfg: Any
  source_model: str
  model_kwargs: dict
  optimizer_factory: strategies.OptimizerFactory
  workdir_loader: Callable[[str], dict] | None = None
  _source: dict | None = dataclasses.field(default=None, repr=False)

  def load_source(self) -> dict:
    """The pretrained variables in cnnrnn's layout, read (and checked) once.

    The trainer calls it before it reads any data or compiles anything, so that a missing,
    unreadable or ill-fitting source is named in seconds.
    """
    if self._source is None:
      self._source = sources.load_source(self.cfg.source, self.source_model, self.model_kwargs,
                                         workdir_loader=self.workdir_loader)
    return self._source

  def wrap_model(self, model: nn.Module):
    return strategies.wrap_model(model, self.cfg)

  def make_optimizer(self, optimizer_cfg, model: nn.Module, init_args, init_kwargs,
                     total_steps: int):
    """`strategies.make_optimizer` for `model` called on `init_args`/`init_kwargs` (shapes
    only)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_args, train=False,
                                                 **init_kwargs))
    order = groups.call_order(model, *init_args, train=False, **init_kwargs)
    return strategies.make_optimizer(optimizer_cfg, self.cfg, abstract["params"], order,
                                     total_steps, optimizer_factory=self.optimizer_factory)

  def initial_state(self, state, tx: optax.GradientTransformation, state_shardings):
    """`state` (freshly initialised) with the pretrained weights and a fresh optimizer state."""
    target = jax.device_get({"params": state.params, **state.model_state})
    source = jax.tree.map(lambda x: x, self.load_source())  # adapt* may rearrange the dicts
    if self.cfg.get("target_module"):
      variables = heads.adapt_into(source, target, self.cfg.target_module)
    else:
      variables = heads.adapt(source, target, self.cfg.head, heads.resample_rules(),
                              keep_head=self.cfg.get("keep_head", False))
    params = variables.pop("params")
    params = jax.device_put(params, state_shardings.params)
    model_state = jax.device_put(variables, state_shardings.model_state)
    opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
    return state.replace(params=params, model_state=model_state, opt_state=opt_state)


def plan(config, model_kwargs: Mapping[str, Any], *,
         optimizer_factory: strategies.OptimizerFactory,
         workdir_loader: Callable[[str], dict] | None = None) -> Plan | None:
  """The transfer plan of an experiment config, or None without `transfer.source`.

  Args:
    config: the experiment config.
    model_kwargs: the target model's keyword arguments.
    optimizer_factory: `(optimizer config block, total steps) -> (tx, schedule)`, e.g.
      `cnnrnn.train.optim.make_optimizer`.
    workdir_loader: reads a workdir source's variables (`cnnrnn.train.runs.load_variables`;
      needed for a workdir source).

  Raises:
    ValueError: a bad `transfer.*` field.

  Example (what the trainer does with a `transfer` block):

    >>> from cnnrnn import transfer
    >>> from cnnrnn.train import default_config, optim
    >>> config = default_config()
    >>> transfer.plan(config, {}, optimizer_factory=optim.make_optimizer) is None  # scratch
    True
    >>> config.transfer.source = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    >>> config.transfer.strategy = "linear_probe"
    >>> plan = transfer.plan(config, {"num_classes": 10}, optimizer_factory=optim.make_optimizer)
    >>> plan.source_model, plan.cfg.strategy  # source_model defaults to model.name
    ('lenet5', 'linear_probe')
  """
  cfg = config.get("transfer")
  if cfg is None:
    return None
  if not cfg.get("source"):
    if cfg.get("strategy", "full") != "full" or cfg.get("keep_head"):
      raise ValueError(f"transfer.strategy={cfg.get('strategy')!r} needs transfer.source (a "
                       "workdir, a state dict file or timm:/torchvision:NAME); it is empty")
    return None
  validate(cfg)
  return Plan(cfg, cfg.get("source_model") or config.model.name, dict(model_kwargs),
              optimizer_factory, workdir_loader)
