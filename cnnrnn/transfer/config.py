"""The `transfer` block of an experiment config: its fields, defaults and checks."""

import ml_collections

STRATEGIES = ("full", "linear_probe", "discriminative", "progressive")


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
  if not 0 <= cfg.backbone_lr_scale < float("inf"):  # NaN fails every comparison.
    raise ValueError(f"transfer.backbone_lr_scale={cfg.backbone_lr_scale}; allowed: a finite "
                     "number >= 0")
  if not 0 <= cfg.stage_lr_decay <= 1:
    raise ValueError(f"transfer.stage_lr_decay={cfg.stage_lr_decay}; allowed: in [0, 1]")
  steps = list(cfg.unfreeze_steps or ())
  if cfg.strategy == "progressive" and not steps:
    raise ValueError("transfer.strategy='progressive' needs transfer.unfreeze_steps, e.g. "
                     "(500, 1000, 1500): the step at which each next stage unfreezes")
  if any(int(s) < 0 for s in steps) or steps != sorted(steps):
    raise ValueError(f"transfer.unfreeze_steps={tuple(steps)}; allowed: increasing steps >= 0")
