"""Time-series classification on UCR datasets with the FCN and ResNet of Wang, Yan & Oates 2017
("Time Series Classification from Scratch with Deep Neural Networks: A Strong Baseline"),
the LSTM-FCN of Karim et al. 2017, or an LSTM (`rnn_classifier`).

ARG is "MODEL,DATASET[,STEPS]": MODEL one of ts_fcn, ts_resnet, lstm_fcn, rnn_classifier;
DATASET one of ucr_gunpoint, ucr_italy_power_demand, ucr_arrowhead, ucr_osuleaf (bundled
with sktime, no download); STEPS the training steps (default 1,500). The committed runs used
400 steps:

  python -m cnnrnn.main --config=configs/ucr_classification.py:ts_fcn,ucr_gunpoint,400 \\
      --workdir=workdirs/ucr_fcn_gunpoint

The paper: Adam (lr 1e-3, the FCN for 2,000 epochs, the ResNet for 1,500), batch size
min(N_train / 10, 16), the test error of the last epoch (no validation split in UCR).
Paper (test error rates, FCN / ResNet, as the authors' repository lists them): GunPoint
0.000 / 0.007, ItalyPowerDemand 0.030 / 0.040, ArrowHead 0.120 / 0.183, OSULeaf 0.012 /
0.021 (ArrowHead, we believe, is not among the paper's own 44 datasets).
Ours (as committed, 400 steps of batch 16, i.e. 96-178 epochs, 2 CPU cores, 1-6 minutes per
run): GunPoint 0.047 / 0.007, ItalyPowerDemand 0.042 / 0.036, ArrowHead 0.446 / 0.166;
OSULeaf not run (experiments/ucr_classification/README.md). The default budget here (1,500
steps) is still far below the paper's.
"""

from cnnrnn.train import default_config

MODELS = ("ts_fcn", "ts_resnet", "lstm_fcn", "rnn_classifier")
DATASETS = {"ucr_gunpoint": 2, "ucr_italy_power_demand": 2, "ucr_arrowhead": 3,
            "ucr_osuleaf": 6}  # name -> classes


def get_config(arg: str = "ts_fcn,ucr_gunpoint"):
  try:
    model, dataset, *rest = arg.split(",")
    steps = int(rest[0]) if rest else 1500
  except ValueError as e:
    raise ValueError(f"configs/ucr_classification.py:{arg}; expected MODEL,DATASET[,STEPS]") from e
  if model not in MODELS or dataset not in DATASETS or len(rest) > 1:
    raise ValueError(f"configs/ucr_classification.py:{arg}; MODEL one of {MODELS}, "
                     f"DATASET one of {tuple(DATASETS)}")
  c = default_config()
  c.model.name = model
  if model == "rnn_classifier":
    c.model.cell = "lstm"
    c.model.hidden_size = 64
    c.model.num_outputs = DATASETS[dataset]  # (the CNNs take num_classes from the data)
  c.task.name = "classification"
  c.task.input_key = "series"
  c.dataset.name = dataset
  c.batch_size = 16
  c.eval_batch_size = 64
  c.num_train_steps = steps
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.log_every_steps = 100
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 500
  return c
