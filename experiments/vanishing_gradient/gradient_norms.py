"""||dL/dh_t|| through time for tanh RNN, LSTM and GRU on the adding problem.

  python experiments/vanishing_gradient/gradient_norms.py [--seq_len=100] [--out=DIR]
  python experiments/vanishing_gradient/gradient_norms.py --trained simple=WORKDIR lstm=WORKDIR ...

Without --trained: freshly initialised models (mean of --seeds seeds), written to
gradient_norms_init.png. With --trained CELL=WORKDIR pairs: the models trained by
configs/adding_problem.py in those workdirs (their last checkpoint), on test sequences,
written to gradient_norms_trained.png. Prints, per cell, the norm at the last and first
step and their ratio: how much of the loss gradient survives T-1 recurrent transitions.
"""

import argparse
import os

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cnnrnn import models
from cnnrnn.analysis import compare_cells, hidden_state_gradient_norms, plot_gradient_norms
from cnnrnn.analysis.curves import read_metrics
from cnnrnn.data.synthetic import adding_problem


def trained_curves(pairs: list[str], seq_len: int, batch_size: int = 256) -> dict[str, np.ndarray]:
  """Gradient norms of trained adding-problem models, on fresh test sequences."""
  data = adding_problem(batch_size, seq_len, seed=12345)
  x, y = jnp.asarray(data["inputs"]), jnp.asarray(data["targets"])
  curves = {}
  for pair in pairs:
    cell, workdir = pair.split("=", 1)
    ckpts = os.path.join(workdir, "checkpoints")
    step = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(os.path.join(ckpts, str(step), "state"))["params"]
    hidden = params["rnn"]["layer0"]["cell"]["recurrent"]["kernel"].shape[0]
    model = models.create("rnn_classifier", num_outputs=1, cell=cell, hidden_size=hidden)
    norms = hidden_state_gradient_norms(model, {"params": params}, x,
                                        lambda out: jnp.mean(jnp.square(out - y)))
    test = [r for r in read_metrics(workdir) if r["split"] == "test"][-1]
    curves[f"{cell} (trained {step} steps, test MSE {test['mse']:.3g})"] = norms["rnn/layer0"]
  return curves


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seq_len", type=int, default=100)
  p.add_argument("--hidden_size", type=int, default=128)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  p.add_argument("--trained", nargs="*", default=[], help="CELL=WORKDIR pairs")
  args = p.parse_args()
  if args.trained:
    curves = trained_curves(args.trained, args.seq_len)
    path = plot_gradient_norms(curves, os.path.join(args.out, "gradient_norms_trained.png"),
                               title=f"Trained models, adding problem T={args.seq_len}")
    print(f"T={args.seq_len}, trained models; wrote {path}")
  else:
    runs = [compare_cells(seq_len=args.seq_len, hidden_size=args.hidden_size, seed=s)
            for s in range(args.seeds)]
    curves = {cell: np.mean([r[cell] for r in runs], axis=0) for cell in runs[0]}
    path = plot_gradient_norms(curves, os.path.join(args.out, "gradient_norms_init.png"),
                               title=f"At initialisation, adding problem T={args.seq_len}")
    print(f"T={args.seq_len}, H={args.hidden_size}, at init, mean of {args.seeds} seeds; wrote {path}")
  print("| cell | norm at t=T-1 | norm at t=0 | ratio t=0 / t=T-1 |")
  print("|---|---:|---:|---:|")
  for cell, c in curves.items():
    print(f"| {cell} | {c[-1]:.3e} | {c[0]:.3e} | {c[0] / c[-1]:.1e} |")


if __name__ == "__main__":
  main()
