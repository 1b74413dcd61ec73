"""Gradient flow through time: ||dL/dh_t|| at every step of a recurrent model.

The scan driver `cnnrnn.nn.RNN` adds a zero perturbation `hidden_states` [B, T, H] to the
hidden state of every step when the 'perturbations' collection is in play (Flax's
`Module.perturb`). Since h_t + 0 feeds both the output at t and the next step, the
gradient of the loss with respect to that perturbation is exactly the total derivative
dL/dh_t. This works for any cell and any model built on the driver, with no change to
the model; `init` never creates the perturbations, so training variables stay clean.
"""

from collections.abc import Callable, Mapping, Sequence
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnnrnn.data.synthetic import adding_problem


def hidden_state_gradient_norms(model, variables: Mapping[str, Any], inputs: Any,
                                loss_fn: Callable[[Any], jax.Array],
                                **apply_kwargs) -> dict[str, np.ndarray]:
  """Mean over the batch of ||dL/dh_t||_2 for every recurrent layer and step.

  Args:
    model: a Flax module containing one or more `cnnrnn.nn.RNN` drivers.
    variables: its variables.
    inputs: the model's positional input (e.g. [B, T, F] or [B, T] token ids).
    loss_fn: maps the model's output to a scalar loss.
    **apply_kwargs: passed to `model.apply` (e.g. train=False, seq_lengths=...).

  Returns:
    {driver path (e.g. "rnn/layer0", "rnn/layer1/backward"): [T] float array}.

  Raises:
    ValueError: the model contains no recurrent driver.
  """
  variables = {k: v for k, v in variables.items() if k != "perturbations"}
  _, state = model.apply(variables, inputs, mutable=["perturbations"], **apply_kwargs)
  zeros = state.get("perturbations")
  if not zeros:
    raise ValueError("the model has no cnnrnn.nn.RNN layer to measure")

  def loss(perturbations):
    return loss_fn(model.apply({**variables, "perturbations": perturbations}, inputs,
                               **apply_kwargs))

  grads = jax.grad(loss)(zeros)
  flat = traverse_util.flatten_dict(dict(jax.device_get(grads)))
  return {"/".join(path[:-1]): np.linalg.norm(np.asarray(g, np.float64), axis=-1).mean(axis=0)
          for path, g in flat.items()}  # g: [B, T, H] -> [T]


def compare_cells(cells: Sequence[str] = ("simple", "lstm", "gru"), *, seq_len: int = 100,
                  hidden_size: int = 64, batch_size: int = 32, seed: int = 0,
                  cell_kwargs: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> dict[str, np.ndarray]:
  """||dL/dh_t|| of freshly initialized one-layer models on the adding problem.

  Each model is `RNNClassifier(num_outputs=1, cell=...)` with the same seed; the loss is
  the MSE against the adding-problem target, read from the last step, so the gradient
  reaching step t has crossed T-1-t recurrent transitions.

  Args:
    cells: cell names to compare.
    seq_len: T.
    hidden_size: H.
    batch_size: B.
    seed: data and initialization seed.
    cell_kwargs: optional per-cell attributes, e.g. {"simple": {"recurrent_kernel_init": ...}}.

  Returns:
    {cell name: [T] mean gradient norms}.
  """
  from cnnrnn.models.rnn_classifier import RNNClassifier  # noqa: PLC0415 (models import nn)

  data = adding_problem(batch_size, seq_len, seed=seed)
  x, y = jnp.asarray(data["inputs"]), jnp.asarray(data["targets"])
  curves = {}
  for cell in cells:
    model = RNNClassifier(num_outputs=1, hidden_size=hidden_size, cell=cell,
                          cell_kwargs=(cell_kwargs or {}).get(cell))
    variables = model.init(jax.random.key(seed), x)
    norms = hidden_state_gradient_norms(model, variables, x,
                                        lambda out: jnp.mean(jnp.square(out - y)))
    curves[cell] = norms["rnn/layer0"]
  return curves


_LABELS = {"simple": "SimpleRNN (tanh)", "lstm": "LSTM", "gru": "GRU"}


def plot_gradient_norms(curves: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                        title: str = "Gradient flow through time") -> str:
  """Plots ||dL/dh_t|| against t on a log scale and saves a PNG.

  Args:
    curves: {label (or cell name "simple"/"lstm"/"gru"): [T] norms}.
    path: output file.
    title: figure title.

  Returns:
    The path written.
  """
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
  except ImportError as e:
    raise ImportError("plots need matplotlib: pip install 'cnnrnn[plots]'") from e
  fig = Figure(figsize=(6.4, 4.2))
  FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend.
  ax = fig.add_subplot()
  for label, norms in curves.items():
    norms = np.asarray(norms, np.float64)
    label = _LABELS.get(label, label)
    underflow = int(np.sum(norms == 0))
    if underflow:  # Exact zeros (float32 underflow) cannot be drawn on a log axis.
      label += f" ({underflow} steps underflow to 0)"
    ax.semilogy(np.arange(len(norms)), np.where(norms > 0, norms, np.nan), label=label)
  ax.set_xlabel("time step t")
  ax.set_ylabel(r"$\|\partial L / \partial h_t\|$ (batch mean)")
  ax.set_title(title)
  ax.grid(True, which="major", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.fspath(path)
  fig.savefig(path, dpi=120)
  return path
