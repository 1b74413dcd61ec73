"""The pure step functions, jitted once by the trainer:

  train_step(state, batch) -> (state, metrics)
  eval_step(state, batch, carry) -> (metrics, carry)

`carry` is the recurrent state a stateful model (`cnnrnn.models.stateful`) passes from
batch to batch (`state.carry` in training; threaded by the caller in evaluation); it is
None otherwise.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnnrnn.models import stateful
from cnnrnn.train.state import TrainState


def _apply(model: nn.Module, task, params, model_state, batch, carry, *, train: bool, rng=None):
  """Runs the model on a batch; returns (outputs, updated model_state, final carry)."""
  args, kwargs = task.model_inputs(batch)
  if carry is not None:
    kwargs["carry"] = stateful.reset(carry, batch.get("reset"))
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else None
  if train and model_state:
    outputs, model_state = model.apply(variables, *args, train=True, rngs=rngs,
                                       mutable=list(model_state), **kwargs)
  else:
    outputs = model.apply(variables, *args, train=train, rngs=rngs, **kwargs)
  if carry is not None:
    carry, outputs = outputs
    carry = jax.lax.stop_gradient(carry)
  return outputs, model_state, carry


def make_train_step(model: nn.Module, task, tx: optax.GradientTransformation,
                    grad_accum_steps: int = 1) -> Callable:
  """Builds the pure training step.

  With `grad_accum_steps` k > 1 the batch [B, ...] is split into k micro-batches of B/k
  (example j goes to micro-batch j mod k, which keeps every device's rows on that device;
  a carry's rows are split the same way), their gradients are averaged, and one update is
  applied. BatchNorm then normalises with micro-batch statistics.
  """

  def loss_fn(params, model_state, batch, carry, rng):
    outputs, model_state, carry = _apply(model, task, params, model_state, batch, carry,
                                         train=True, rng=rng)
    loss, metrics = task.loss_and_metrics(outputs, batch)
    return loss, (metrics, model_state, carry)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      (_, (metrics, model_state, carry)), grads = grad_fn(
          state.params, state.model_state, batch, state.carry, rng)
    else:
      k = grad_accum_steps
      split = lambda t: jax.tree.map(
          lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), t)
      merge = lambda t: jax.tree.map(
          lambda x: x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), t)

      def accumulate(acc, inputs):
        grads_sum, metrics_sum, model_state = acc
        i, mb, mb_carry = inputs
        (_, (metrics, model_state, mb_carry)), grads = grad_fn(
            state.params, model_state, mb, mb_carry, jax.random.fold_in(rng, i))
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        return (add(grads_sum, grads), add(metrics_sum, metrics), model_state), mb_carry

      micro, micro_carry = split(batch), split(state.carry)
      first = jax.tree.map(lambda x: x[0], (micro, micro_carry))
      metric_shapes = jax.eval_shape(
          lambda: loss_fn(state.params, state.model_state, *first, rng)[1][0])
      init = (jax.tree.map(jnp.zeros_like, state.params),
              jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes),
              state.model_state)
      (grads, metrics, model_state), carry = jax.lax.scan(
          accumulate, init, (jnp.arange(k), micro, micro_carry))
      carry = merge(carry)
      grads = jax.tree.map(lambda g: g / k, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state, carry=carry)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, task) -> Callable:
  """Builds the pure evaluation step: (metric sums over the batch's real examples, the
  final carry)."""

  def eval_step(state: TrainState, batch: dict, carry=None):
    outputs, _, carry = _apply(model, task, state.params, state.model_state, batch, carry,
                               train=False)
    return task.loss_and_metrics(outputs, batch)[1], carry

  return eval_step
