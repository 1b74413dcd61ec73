"""The pure step functions: `train_step(state, batch) -> (state, metrics)` and
`eval_step(state, batch) -> metrics`, jitted once by the trainer."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnnrnn.train.state import TrainState


def _apply(model: nn.Module, task, params, model_state, batch, *, train: bool, rng=None):
  """Runs the model on a batch; returns (outputs, updated model_state)."""
  args, kwargs = task.model_inputs(batch)
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else None
  if train and model_state:
    return model.apply(variables, *args, train=True, rngs=rngs, mutable=list(model_state), **kwargs)
  return model.apply(variables, *args, train=train, rngs=rngs, **kwargs), model_state


def make_train_step(model: nn.Module, task, tx: optax.GradientTransformation,
                    grad_accum_steps: int = 1) -> Callable:
  """Builds the pure training step.

  With `grad_accum_steps` k > 1 the batch [B, ...] is split into k micro-batches of B/k
  (example j goes to micro-batch j mod k, which keeps every device's rows on that device),
  their gradients are averaged, and one update is applied. BatchNorm then normalises with
  micro-batch statistics.
  """

  def loss_fn(params, model_state, batch, rng):
    outputs, model_state = _apply(model, task, params, model_state, batch, train=True, rng=rng)
    loss, metrics = task.loss_and_metrics(outputs, batch)
    return loss, (metrics, model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      (_, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
    else:
      k = grad_accum_steps
      micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)

      def accumulate(carry, inputs):
        grads_sum, metrics_sum, model_state = carry
        i, mb = inputs
        (_, (metrics, model_state)), grads = grad_fn(
            state.params, model_state, mb, jax.random.fold_in(rng, i))
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        return (add(grads_sum, grads), add(metrics_sum, metrics), model_state), None

      zeros_like = lambda t: jax.tree.map(jnp.zeros_like, t)
      first = jax.tree.map(lambda x: x[0], micro)
      metric_shapes = jax.eval_shape(lambda: loss_fn(state.params, state.model_state, first, rng)[1][0])
      init = (zeros_like(state.params),
              jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes),
              state.model_state)
      (grads, metrics, model_state), _ = jax.lax.scan(accumulate, init, (jnp.arange(k), micro))
      grads = jax.tree.map(lambda g: g / k, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, task) -> Callable:
  """Builds the pure evaluation step: metric sums over the batch's real examples."""

  def eval_step(state: TrainState, batch: dict):
    outputs, _ = _apply(model, task, state.params, state.model_state, batch, train=False)
    return task.loss_and_metrics(outputs, batch)[1]

  return eval_step
