"""Character-level LSTM language model on Tiny Shakespeare (Karpathy 2015, "The
unreasonable effectiveness of recurrent neural networks"; char-rnn).

Karpathy's char-rnn: 2-3 LSTM layers of 512, sequences of 50-100 characters, RMSprop/Adam
at 2e-3, gradient clipping 5, dropout 0.5 on the larger models; best validation loss on
Tiny Shakespeare about 1.4 nats per character. This config: 2 x 512 LSTM, truncated BPTT
over 64 contiguous streams of 100 characters, the carry passed from batch to batch, Adam
2e-3 with cosine decay, clipping 5, dropout 0.2. On 2 CPU cores it reaches a validation
loss <= 1.55 nats/char within the hour (experiments/char_rnn).

  python -m cnnrnn.main --config=configs/char_rnn_shakespeare.py --workdir=workdirs/char_rnn \\
      --config.dataset.manual_dir=DIR_WITH_input.txt
  python -m cnnrnn.sample --workdir=workdirs/char_rnn --prompt="ROMEO:" --temperature=0.8

The vocabulary (65 characters) comes from the training split; `model.vocab_size` is filled
in from it.
"""

from cnnrnn.train import default_config


def get_config():
  c = default_config()
  c.model.name = "rnn_lm"
  c.model.cell = "lstm"
  c.model.hidden_size = 512
  c.model.num_layers = 2
  c.model.dropout = 0.2
  c.task.name = "language_model"
  c.dataset.name = "tiny_shakespeare"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  c.dataset.test_split = "test"
  c.dataset.seq_len = 100
  c.batch_size = 64  # Streams.
  c.eval_batch_size = 16
  c.num_epochs = 12
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.clip_norm = 5.0
  c.log_every_steps = 50
  c.eval_every_steps = 150
  c.checkpoint_every_steps = 150
  c.checkpoint.best_metric = "loss"
  c.checkpoint.best_mode = "min"
  return c
