"""Recurrent seq2seq on Multi30k task 1, De->En: bentrevett/pytorch-seq2seq tutorials 1-3 and
Luong et al. 2015's global attention. ARG: a variant of `cnnrnn.models.seq2seq.VARIANTS`.

  ptseq2seq_lstm         Sutskever et al. 2014, "Sequence to sequence learning with neural
                         networks" (tutorial 1): 2-layer LSTM encoder and decoder, embedding
                         256, hidden 512, dropout 0.5, the final encoder state only.
                         Published on this protocol: 13.8 BLEU.
  ptseq2seq_gru_context  Cho et al. 2014, "Learning phrase representations using RNN
                         encoder-decoder" (tutorial 2): GRU 512, the context vector fed at
                         every step and to the output layer. Published: 20.6 BLEU.
  ptseq2seq_bahdanau     Bahdanau et al. 2015, "Neural machine translation by jointly learning
                         to align and translate" (tutorial 3): BiGRU encoder 512, GRU decoder
                         512, additive attention. Published: 28.3 BLEU (28.1 in tutorial 4,
                         with masking and packed sequences, which this model always has).
  luong                  Luong et al. 2015, "Effective approaches to attention-based neural
                         machine translation": global attention (general score) with input
                         feeding, 2-layer LSTM 512, source reversed. No published number on
                         this protocol.

Protocol of the published numbers: Multi30k test2016 (1,000 sentences), lowercased tokens
with min frequency 2, greedy decoding, BLEU on tokens (here `bleu_tok`; theirs: spaCy tokens,
here the dataset's own lowercased Moses tokens, `moses_words`); Adam 1e-3, gradient clipping
1, batch 128, 10 epochs. Deviations: they test the checkpoint of the best validation loss
(here: the last one); they train
with a teacher-forcing ratio of 0.5 (half of the steps feed the model's own prediction);
cnnrnn's translation task always teacher-forces. Their initialisers (uniform +-0.08,
normal 0.01) are not reproduced: Flax's defaults.

  python -m cnnrnn.main --config=configs/multi30k_seq2seq.py:ptseq2seq_bahdanau \\
      --workdir=workdirs/multi30k_seq2seq_bahdanau \\
      --config.dataset.manual_dir=../shared/datasets/multi30k
  python -m cnnrnn.translate --workdir=workdirs/multi30k_seq2seq_bahdanau --beam_size=4 \\
      --input=sentences.de

Metrics: `bleu` (sacreBLEU, detokenised and cased, 13a) and `bleu_tok` on the test split at
the end, on the validation split at every evaluation.

Result (10 epochs at batch 64 = 4,532 updates, the tutorials' epochs at half their batch;
embedding 128 / hidden 256, half the tutorials' widths; one shared CPU core per run; see
experiments/translation/README.md), test2016 bleu_tok greedy / beam 4 (published, greedy):
ptseq2seq_lstm 16.49 / 16.84 (13.8), ptseq2seq_gru_context 23.46 / 24.45 (20.6),
ptseq2seq_bahdanau 36.75 / 37.75 (28.3); sacreBLEU greedy 11.96, 19.07, 31.10. Each passes
its published number; the runs were extended by exact resume from 400 updates (the
Bahdanau run through 1,200). Not measured: the tutorials' widths at batch 128, `luong`.
"""

from cnnrnn.models.seq2seq import VARIANTS
from configs import multi30k_transformer

CONFIG_VARIANTS = ("ptseq2seq_lstm", "ptseq2seq_gru_context", "ptseq2seq_bahdanau", "luong")


def get_config(arg: str = "ptseq2seq_bahdanau"):
  if arg not in CONFIG_VARIANTS or arg not in VARIANTS:
    raise ValueError(f"configs/multi30k_seq2seq.py:{arg}; allowed: {', '.join(CONFIG_VARIANTS)}")
  c = multi30k_transformer.translation_config("seq2seq")
  c.model.variant = arg
  # The widths as config fields, so that a run can override them (--config.model.hidden_size).
  c.model.embed_dim = VARIANTS[arg]["embed_dim"]
  c.model.hidden_size = VARIANTS[arg]["hidden_size"]
  c.num_epochs = 10
  c.optimizer.learning_rate = 1e-3
  c.optimizer.clip_norm = 1.0
  return c
