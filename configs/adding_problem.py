"""The adding problem (Hochreiter & Schmidhuber 1997, in the form of Le, Jaitly & Hinton
2015): sequences of T (value, marker) pairs, two of them marked, one in each half; predict
the sum of the two marked values. Predicting the mean (1.0) gives MSE 2/12 ~ 0.167; a
model "solves" the task well below that (Le et al.: MSE < 0.01 counts as learned).

ARG is "CELL,T": CELL one of simple (tanh Elman RNN), lstm, gru; e.g.

  python -m cnnrnn.main --config=configs/adding_problem.py:lstm,100 --workdir=workdirs/add_lstm_100

The classic result (Le et al. 2015, figure 2; Hochreiter & Schmidhuber 1997): LSTMs learn
it for T in the hundreds, while a tanh RNN with standard initialisation stays at the
0.167 baseline. Our measurements: experiments/vanishing_gradient/README.md.
"""

from cnnrnn.train import default_config

CELLS = ("simple", "lstm", "gru")


def get_config(arg: str = "lstm,100"):
  try:
    cell, seq_len = arg.split(",")
    seq_len = int(seq_len)
  except ValueError as e:
    raise ValueError(f"configs/adding_problem.py:{arg}; expected CELL,T e.g. lstm,100") from e
  if cell not in CELLS:
    raise ValueError(f"configs/adding_problem.py:{arg}; CELL must be one of {CELLS}")
  c = default_config()
  c.model.name = "rnn_classifier"
  c.model.cell = cell
  c.model.hidden_size = 128
  c.model.num_outputs = 1
  c.task.name = "regression"
  c.dataset.name = "adding_problem"
  c.dataset.seq_len = seq_len
  c.dataset.num_train = 100_000
  c.dataset.num_test = 10_000
  c.dataset.seed = 0
  c.batch_size = 64
  c.eval_batch_size = 1000
  c.num_train_steps = 4000
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.clip_norm = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 1000
  c.checkpoint.best_metric = "mse"
  c.checkpoint.best_mode = "min"
  return c
