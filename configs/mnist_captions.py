"""Image captioning on MNIST with captions: soft attention vs none.

Papers: Show, Attend and Tell, Xu et al. 2015 (ICML): CNN annotation grid, LSTM decoder
with soft attention, gate beta, initial state from the mean annotation, doubly stochastic
regulariser; the data after Mansimov et al. 2016, "Generating images from captions with
attention" (ICLR): two MNIST digits left/right or top/bottom on a 60x60 canvas, template
captions over a 22-word vocabulary ("the digit 3 is on the left of the digit 7 .").

Argument VARIANT: attention (default) | no_attention (the mean-pooled features only set
the LSTM's initial state; no context vector, no regulariser).

  python -m cnnrnn.main --config=configs/mnist_captions.py:attention \
      --workdir=workdirs/mnist_captions_attention \
      --config.dataset.manual_dir=../shared/datasets/mnist

Evaluation decodes greedily (--config.task.beam_size=4 for beam search) and logs
exact_match and bleu beside the teacher-forced loss, accuracy and perplexity.

Result (experiments/hybrids/README.md; 800 steps, one CPU core, greedy): exact match 0.1% /
5.2% / 8.8%, BLEU 35.7 / 55.8 / 60.8 (no attention / attention / attention with
task.attention_penalty=0); beam 4 within a point. Exact match is at most ~50%: each canvas
has two true captions and the reference is one of them by a coin flip.
"""

from cnnrnn.data.builders.mnist_generated import CAPTION_VOCAB
from cnnrnn.train import default_config

VARIANTS = {"attention": True, "no_attention": False}


def get_config(arg: str = "attention"):
  if arg not in VARIANTS:
    raise ValueError(f"configs/mnist_captions.py:{arg}; allowed: {', '.join(VARIANTS)}")
  c = default_config()
  c.model.name = "captioner"
  c.model.vocab_size = len(CAPTION_VOCAB)
  c.model.encoder = "conv_stack"
  # 60x60 -> three 2x2 pools -> a 7x7 grid of 64-d annotation vectors (L = 49).
  c.model.encoder_kwargs = dict(features=(32, 64, 64), pool_every=1, dense=())
  c.model.embed_size = 64
  c.model.hidden_size = 256
  c.model.attention_size = 128
  c.model.attention = VARIANTS[arg]
  c.task.name = "captioning"
  c.task.attention_penalty = 1.0 if VARIANTS[arg] else 0.0
  c.task.beam_size = 1
  c.dataset.name = "mnist_captions"
  c.dataset.size = 60
  c.dataset.num_train = 20_000
  c.dataset.num_test = 2_000
  c.batch_size = 64
  c.eval_batch_size = 200
  c.num_epochs = 5
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.clip_norm = 5.0
  c.log_every_steps = 50
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 500
  return c
