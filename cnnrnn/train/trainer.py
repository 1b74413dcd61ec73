"""The one trainer: config in, trained and evaluated model out.

`train_and_evaluate(config, workdir)` builds the mesh, the data streams, the model, the
task and the optimizer from `config`; jits `train_step` and `eval_step` once with
`NamedSharding`s; trains with periodic logging, evaluation and checkpointing; resumes
from the newest checkpoint in `workdir` when there is one; and ends with an evaluation
on the test split, logged as `{"step": N, "split": "test", ...}`.
"""

import dataclasses
import inspect
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnnrnn import accel
from cnnrnn import data
from cnnrnn import models
from cnnrnn.models import stateful
from cnnrnn import tasks
from cnnrnn import transfer
from cnnrnn.train import config_schema
from cnnrnn.train import defaults
from cnnrnn.train import evaluators
from cnnrnn.train import optim
from cnnrnn.train import preemption
from cnnrnn.train import run_identity
from cnnrnn.train import runs
from cnnrnn.train import sharding
from cnnrnn.train import steps
from cnnrnn.train.checkpoint import Checkpointer, SaveTimer
from cnnrnn.train.state import TrainState
from cnnrnn.train.workdir_lock import WorkdirLock
from cnnrnn.train.writers import MetricWriter, Progress


def model_kwargs(model_config) -> dict:
  """`config.model` minus its name, with dtype names turned into dtypes."""
  kwargs = {k: v for k, v in model_config.to_dict().items() if k != "name"}
  for field in ("dtype", "param_dtype"):
    if isinstance(kwargs.get(field), str):
      if kwargs[field] not in config_schema.DTYPES:
        raise ValueError(
            f"model.{field}={kwargs[field]!r}; allowed: {', '.join(config_schema.DTYPES)}")
      kwargs[field] = config_schema.DTYPES[kwargs[field]]
  for k, v in kwargs.items():
    if isinstance(v, list):
      kwargs[k] = tuple(v)
  return kwargs


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks names and numbers before anything is compiled or read.

  Raises:
    ValueError: naming the bad field and the allowed values.
  """
  config_schema.validate(config)
  accel.validate(config.accel)
  if config.task.name not in tasks.names():
    raise ValueError(f"task.name={config.task.name!r}; known tasks: {', '.join(tasks.names())}")
  optim.validate(config.optimizer)
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{field}={value!r}; allowed: a positive integer")
    if value % num_devices:
      raise ValueError(
          f"{field}={value} does not divide over the {num_devices} devices of the mesh; "
          f"use a multiple of {num_devices}"
      )
  accum = config.get("grad_accum_steps", 1)
  if accum < 1 or config.batch_size % (accum * num_devices):
    raise ValueError(
        f"grad_accum_steps={accum}: batch_size={config.batch_size} must be a multiple of "
        f"grad_accum_steps x devices = {accum * num_devices}"
    )
  if not config.get("num_train_steps") and not config.get("num_epochs"):
    raise ValueError("Set num_train_steps or num_epochs (both are unset or 0)")
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if config.get(field, 1) < 0:
      raise ValueError(f"{field}={config.get(field)}; allowed: an integer >= 0 (0: never)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_changes=(), start_over: bool = False) -> dict:
  """Trains and evaluates the model of `config`; resumes from `workdir` if possible.

  The whole config is validated before anything is written, read or compiled. The run
  then holds `workdir` exclusively (`workdir_lock`), and a resume must keep the saved
  config's computation (`run_identity`). SIGTERM/SIGINT save the current step and raise
  `preemption.Preempted`; a damaged checkpoint is set aside and the previous one used.

  Args:
    config: an experiment config (see `configs/*.py`).
    workdir: receives config.json, metrics.jsonl, TensorBoard events and checkpoints.
    allow_changes: config fields (or blocks) a resume may change (`run_identity.check`).
    start_over: when checkpoints exist but none is usable, train from step 0 anyway.

  Returns:
    The final test-split metrics (e.g. {"loss": ..., "accuracy": ..., "num_examples": ...}).

  Raises:
    ValueError: a bad config field, or a resume that changes the computation.
    workdir_lock.WorkdirLocked: another run holds `workdir`.
    checkpoint.NoUsableCheckpoint: checkpoints exist, none is usable, and not `start_over`.
    preemption.Preempted: stopped by a signal after saving.
  """
  validate_config(config, sharding.batch_partitions(sharding.make_mesh(config.mesh)))
  is_main = jax.process_index() == 0
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file, not a directory")
  os.makedirs(workdir, exist_ok=True)
  with WorkdirLock(workdir, enabled=is_main), preemption.PreemptionWatcher() as watcher:
    run_identity.check(config, workdir, allow_changes, write=is_main)
    return _train_and_evaluate(config, workdir, watcher, start_over)


@dataclasses.dataclass
class _Run:
  """What a run is made of, before anything is compiled (built by `_build`)."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  streams: data.Streams
  model: Any
  task: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  total_steps: int
  init_inputs: tuple[tuple, dict]  # One example's model arguments, for shapes.
  transfer_plan: transfer.Plan | None
  carries_state: bool


def _open_data(config) -> tuple[data.Dataset, data.Streams, bool]:
  """The dataset (every split name checked), its streams, and whether batches carry state."""
  dataset = data.load(config.dataset.name, config.dataset.data_dir, config.dataset.manual_dir,
                      options=config.dataset.to_dict())
  for split in {config.dataset.train_split, config.dataset.eval_split, config.dataset.test_split}:
    dataset.split(split)  # Unknown split names fail here, naming the known ones.
  carries_state = getattr(tasks.task_class(config.task.name), "stateful", False)
  streams = data.make_streams(
      config.dataset, dataset, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, seed=config.seed, language_model=carries_state,
      process_index=jax.process_index(), process_count=jax.process_count())
  return dataset, streams, carries_state


def _model_kwargs_from_data(config, dataset, streams) -> dict:
  """`model_kwargs(config.model)`, with the fields the data determines filled in."""
  kwargs = model_kwargs(config.model)
  accepted = inspect.signature(models.get_constructor(config.model.name)).parameters
  for field, value in streams.model_defaults.items():
    if field in kwargs and kwargs[field] != value:
      raise ValueError(f"model.{field}={kwargs[field]} but dataset {dataset.name!r} has {value} "
                       f"{'classes' if field == 'num_classes' else 'tokens in its vocabulary'}")
    # A variant constructor (`transformer(variant, **kwargs)`) passes its kwargs on.
    if field in accepted or any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
      kwargs.setdefault(field, value)  # Filled in from the data when the config leaves it out.
  return kwargs


def _build(config, workdir: str, mesh) -> _Run:
  """Data, model, task and optimizer of `config` (the model wrapped for transfer)."""
  # None unless config.transfer.source is set. The source is read first: a bad one is named
  # before any data is prepared or anything compiled (a torch source is converted with its
  # own number of classes, so the data's are not needed yet).
  transfer_plan = transfer.plan(config, model_kwargs(config.model),
                                optimizer_factory=optim.make_optimizer,
                                workdir_loader=runs.load_variables)
  if transfer_plan is not None:
    transfer_plan.load_source()
  dataset, streams, carries_state = _open_data(config)
  total_steps = int(config.num_train_steps or config.num_epochs * streams.steps_per_epoch)
  kwargs = _model_kwargs_from_data(config, dataset, streams)
  model = models.create(config.model.name, **kwargs)
  if transfer_plan is not None:
    transfer_plan = dataclasses.replace(transfer_plan, model_kwargs=kwargs,
                                        _source=transfer_plan.load_source())
  task_kwargs = {k: v for k, v in config.task.to_dict().items() if k != "name"}
  if "num_classes" in tasks.fields(config.task.name):
    task_kwargs.setdefault("num_classes",
                           kwargs.get("num_classes", streams.model_defaults.get("num_classes")))
  task = tasks.create(config.task.name, **task_kwargs)
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
  if carries_state and not stateful.is_stateful(model):
    raise ValueError(f"task.name={config.task.name!r} carries a recurrent state between batches, "
                     f"but model {config.model.name!r} is not stateful (cnnrnn.models.stateful)")
  # Shapes of one example, from the real pipeline, to initialise the model.
  example = next(iter(streams.eval_batches(config.dataset.eval_split)))
  init_args, init_kwargs = task.model_inputs({k: v[:1] for k, v in example.items()})
  if transfer_plan is not None:
    model = transfer_plan.wrap_model(model)
    tx, schedule = transfer_plan.make_optimizer(config.optimizer, model, init_args, init_kwargs,
                                                total_steps)
  return _Run(config, workdir, mesh, streams, model, task, tx, schedule, total_steps,
              (init_args, init_kwargs), transfer_plan, carries_state)


def _init_state(run: _Run):
  """The fresh train state, jitted with its shardings decided first.

  Returns:
    (state, its abstract shapes, its shardings, the batch sharding).
  """
  config, model = run.config, run.model
  init_args, init_kwargs = run.init_inputs

  def init(rng):
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, *init_args,
                           train=False, **init_kwargs)
    params = variables.pop("params")
    carry = model.zero_carry(config.batch_size) if run.carries_state else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                      opt_state=run.tx.init(params), rng=state_rng, carry=carry)

  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(init, rng)
  state_shardings = sharding.tree_shardings(run.mesh, abstract)
  batch_sharding = sharding.batch_sharding(run.mesh)
  state_shardings = state_shardings.replace(
      carry=stateful.shardings(abstract.carry, batch_sharding))
  state = jax.jit(init, out_shardings=state_shardings)(rng)
  if jax.process_index() == 0:
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    logging.info("Model %s: %s parameters; %d steps (%d per epoch); mesh %s",
                 config.model.name, f"{num_params:,}", run.total_steps,
                 run.streams.steps_per_epoch, dict(run.mesh.shape))
  return state, abstract, state_shardings, batch_sharding


def _compile_steps(run: _Run, state_shardings, batch_sharding):
  """(the jitted train step, the split evaluation: loss pass and the task's evaluator)."""
  config, model, task = run.config, run.model, run.task
  metrics_sharding = sharding.replicated(run.mesh)
  accel_mode = accel.resolve(config.accel)  # Once, for both steps.
  logging.info("accel=%r: %s", config.accel, accel_mode)
  train_step = jax.jit(
      accel.accelerate(steps.make_train_step(model, task, run.tx, config.grad_accum_steps),
                       accel_mode),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, metrics_sharding),
      donate_argnums=0,
  )
  eval_carry = carry_sharding = None
  if run.carries_state:
    zero_carry = lambda: model.zero_carry(config.eval_batch_size)
    carry_sharding = stateful.shardings(jax.eval_shape(zero_carry), batch_sharding)
    eval_carry = jax.jit(zero_carry, out_shardings=carry_sharding)()
  eval_step = jax.jit(accel.accelerate(steps.make_eval_step(model, task), accel_mode),
                      in_shardings=(state_shardings, batch_sharding, carry_sharding),
                      out_shardings=(metrics_sharding, carry_sharding))
  # Tasks scored on generated outputs (translation: BLEU) decode after the loss pass.
  evaluation = evaluators.Evaluation.create(eval_step, task, model, run.streams, run.mesh,
                                            eval_carry)
  return train_step, evaluation


def _checkpointer(run: _Run, state_shardings) -> tuple[Checkpointer, SaveTimer]:
  ckpt_cfg = run.config.checkpoint
  checkpointer = Checkpointer(
      os.path.join(run.workdir, "checkpoints"), max_to_keep=ckpt_cfg.max_to_keep,
      keep_best=ckpt_cfg.keep_best, best_metric=ckpt_cfg.best_metric,
      best_mode=ckpt_cfg.best_mode, async_save=ckpt_cfg.async_save,
      batch_size=run.config.batch_size, state_sharding=state_shardings)
  return checkpointer, SaveTimer(ckpt_cfg.every_secs)


def _restore_or_start(run: _Run, checkpointer, state, abstract, state_shardings, train_iter,
                      start_over: bool):
  """(first step, state): the newest usable checkpoint's, else step 0's (with the
  pretrained weights of a transfer run)."""
  total_steps, workdir, tx, transfer_plan = (run.total_steps, run.workdir, run.tx,
                                             run.transfer_plan)
  is_main = jax.process_index() == 0
  abstract_sharded = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings)
  restored = checkpointer.restore_latest(abstract_sharded, start_over=start_over)
  start = 0
  if restored is not None:
    start, state, data_state = restored
    train_iter.set_state(data_state)
    if start > total_steps:
      raise ValueError(f"num_train_steps: the run in {workdir} is at step {start}, past the "
                       f"{total_steps} steps this config trains for")
    if is_main:
      logging.info("Resumed from %s at step %d", workdir, start)
  elif transfer_plan is not None:
    state = transfer_plan.initial_state(state, tx, state_shardings)
  return start, state


class _TrainMetrics:
  """The train step's metrics: kept on the device until a log step, then checked and written."""

  def __init__(self, run: _Run, writer: MetricWriter, progress: Progress, checkpointer, start):
    self.run, self.writer, self.progress, self.checkpointer = run, writer, progress, checkpointer
    self.pending: list[tuple[int, dict]] = []  # Device metrics not yet fetched.
    self.last_time, self.last_step = time.perf_counter(), start

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics))

  def flush(self, step: int) -> None:
    """Fetches pending metrics, stops on a non-finite loss, logs the interval's means."""
    if not self.pending:
      return
    fetched = jax.device_get([m for _, m in self.pending])
    for (s, _), m in zip(self.pending, fetched):
      if not math.isfinite(float(m["loss"])):
        last_good = self.checkpointer.latest_step()
        raise FloatingPointError(
            f"Training loss is {float(m['loss'])} at step {s}; stopped. Last good checkpoint: "
            f"{'step ' + str(last_good) if last_good is not None else 'none'} in "
            f"{self.run.workdir}.")
    now = time.perf_counter()
    means = evaluators.means(evaluators.sum_metrics(fetched))
    if hasattr(self.run.task, "derived_metrics"):
      means |= self.run.task.derived_metrics(means)
    means["grad_norm"] = float(np.mean([m["grad_norm"] for m in fetched]))
    means["learning_rate"] = float(self.run.schedule(step - 1))
    means["examples_per_sec"] = ((step - self.last_step) * self.run.config.batch_size
                                 / max(now - self.last_time, 1e-9))
    self.pending.clear()
    self.last_time, self.last_step = now, step
    self.writer.write(step, "train", means)
    self.progress.update(step, loss=means["loss"], ex_per_s=round(means["examples_per_sec"]))


def _format(metrics: dict) -> str:
  return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in metrics.items())


def _train_loop(run: _Run, state, train_step, evaluation, checkpointer, save_timer,
                train_iter, start: int, watcher, writer, progress):
  """Steps `start + 1 .. total_steps` with logging, evaluation and checkpoints; the state.

  Raises:
    preemption.Preempted: after saving, when a preemption notice or signal arrived.
  """
  config, workdir, total_steps = run.config, run.workdir, run.total_steps
  eval_split, test_split = config.dataset.eval_split, config.dataset.test_split
  log_every = config.log_every_steps or total_steps
  eval_every, ckpt_every = config.eval_every_steps, config.checkpoint_every_steps
  profile_steps = config.profile_steps
  profile_start = start + 5 if profile_steps else -1
  train_metrics = _TrainMetrics(run, writer, progress, checkpointer, start)
  for step in range(start + 1, total_steps + 1):
    if step == profile_start:
      jax.profiler.start_trace(os.path.join(workdir, "profile"))
    state, metrics = train_step(state, sharding.global_batch(run.mesh, next(train_iter)))
    train_metrics.add(step, metrics)
    if step == profile_start + profile_steps - 1:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
    progress.update(step)
    is_last = step == total_steps
    preempted = watcher.reached(step)
    save_now = ((ckpt_every and step % ckpt_every == 0) or is_last or preempted
                or save_timer.due(sync=step % log_every == 0))
    if step % log_every == 0 or save_now:
      train_metrics.flush(step)
    # The last step is validated too when the test split is another split, so that the
    # last checkpoint can be the best one (checkpoint.keep_best).
    if eval_every and not preempted and (
        (step % eval_every == 0 and not is_last) or (is_last and eval_split != test_split)):
      eval_metrics = evaluation(state, eval_split)
      writer.write(step, "eval", eval_metrics)
      progress.write(f"step {step}: eval " + _format(eval_metrics))
      checkpointer.save_best(step, state, train_iter.get_state(), eval_metrics)
    if save_now:
      checkpointer.save(step, state, train_iter.get_state())
      save_timer.saved()
    if preempted:
      checkpointer.wait()
      raise preemption.Preempted(step, workdir, watcher.signal_name or "a preemption notice")
  return state


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        watcher: preemption.PreemptionWatcher, start_over: bool) -> dict:
  mesh = sharding.make_mesh(config.mesh)
  validate_config(config, sharding.batch_partitions(mesh))
  config = defaults.complete(config)  # Every field present: one default each, defaults.py's.
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  run = _build(config, workdir, mesh)
  state, abstract, state_shardings, batch_sharding = _init_state(run)
  train_step, evaluation = _compile_steps(run, state_shardings, batch_sharding)
  checkpointer, save_timer = _checkpointer(run, state_shardings)
  train_iter = iter(run.streams.train)
  start, state = _restore_or_start(run, checkpointer, state, abstract, state_shardings,
                                   train_iter, start_over)
  writer = MetricWriter(workdir, enabled=is_main)
  progress = Progress(run.total_steps, start, enabled=is_main and config.progress_bar)
  test_split = config.dataset.test_split
  try:
    state = _train_loop(run, state, train_step, evaluation, checkpointer, save_timer,
                        train_iter, start, watcher, writer, progress)
    watcher.training_finished()
    progress.close()
    test_metrics = evaluation(state, test_split)
    final_step = int(jax.device_get(state.step))
    writer.write(final_step, "test", test_metrics)
  finally:
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  if is_main:
    print(f"Test ({test_split}) at step {final_step}: {_format(test_metrics)}\n"
          f"Workdir: {os.path.abspath(workdir)}", flush=True)
  return test_metrics
