"""Word-level LSTM language models on the Penn Treebank (Zaremba, Sutskever & Vinyals 2014,
"Recurrent neural network regularization"). ARG: small, medium or large.

Paper settings (all: 2 LSTM layers, batch 20, plain SGD at learning rate 1, parameters
initialised U(-s, s), dropout on non-recurrent connections only; the carry passed between
consecutive batches of 20 contiguous streams):

  size    units  unroll  init  dropout  clip  epochs  lr decay                  test ppl
  small   200    20      0.1   0        5     13      x0.5 per epoch after 4     114.5
  medium  650    35      0.05  0.5      5     39      x0.8 per epoch after 6      82.7
  large   1500   35      0.04  0.65     10    55      x1/1.15 per epoch after 14  78.4

(their validation perplexities: 120.7, 86.2, 82.2)

Their loss is the NLL summed over the unrolled steps and averaged over the batch
(`task.average_over="rows"`), so learning rate 1 and clipping norm 5 apply to gradients
20-35 times larger than those of a per-token mean.

  python -m cnnrnn.main --config=configs/ptb_lstm.py:small --workdir=workdirs/ptb_small \\
      --config.dataset.manual_dir=DIR_WITH_ptb.train.txt

The 10,000-word vocabulary comes from ptb.train.txt; `model.vocab_size` is filled in.
The decay schedule is counted in steps: `steps_per_epoch` below is the number of
truncated-BPTT windows in one pass over ptb.train.txt (929,589 tokens with <eos>).
"""

from cnnrnn.train import default_config

PTB_TRAIN_TOKENS = 929_589
SIZES = {
    #         units unroll init  dropout clip epochs decay_begin decay
    "small": (200, 20, 0.1, 0.0, 5.0, 13, 4, 0.5),
    "medium": (650, 35, 0.05, 0.5, 5.0, 39, 6, 0.8),
    "large": (1500, 35, 0.04, 0.65, 10.0, 55, 14, 1 / 1.15),
}
BATCH_SIZE = 20


def steps_per_epoch(unroll: int, batch_size: int = BATCH_SIZE) -> int:
  """Training windows per pass over ptb.train.txt (as `cnnrnn.data.text` batches it)."""
  return (PTB_TRAIN_TOKENS - 1) // batch_size // unroll


def get_config(size: str = "small"):
  if size not in SIZES:
    raise ValueError(f"configs/ptb_lstm.py:{size}; allowed sizes: {', '.join(SIZES)}")
  units, unroll, init, dropout, clip, epochs, decay_begin, decay = SIZES[size]
  per_epoch = steps_per_epoch(unroll)
  c = default_config()
  c.model.name = "rnn_lm"
  c.model.cell = "lstm"
  c.model.hidden_size = units
  c.model.num_layers = 2
  c.model.dropout = dropout
  c.model.init_scale = init
  c.task.name = "language_model"
  c.task.average_over = "rows"  # Their loss: summed over the unrolled steps, mean over rows.
  c.dataset.name = "ptb"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  c.dataset.test_split = "test"
  c.dataset.seq_len = unroll
  c.batch_size = BATCH_SIZE
  c.eval_batch_size = 10
  c.num_epochs = epochs
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 1.0
  c.optimizer.clip_norm = clip
  # Their lr = decay ** max(i + 1 - decay_begin, 0) in epoch i = 0, 1, ...: epochs
  # 0 .. decay_begin - 1 at 1, epoch decay_begin at `decay`, and so on. The staircase
  # counts from decay_begin - 1 epochs (where it gives decay ** 0).
  c.optimizer.schedule = "exponential"
  c.optimizer.decay_rate = decay
  c.optimizer.decay_begin = (decay_begin - 1) * per_epoch
  c.optimizer.decay_every = per_epoch
  c.log_every_steps = 200
  c.eval_every_steps = per_epoch
  c.checkpoint_every_steps = per_epoch
  c.checkpoint.best_metric = "loss"
  c.checkpoint.best_mode = "min"
  return c
