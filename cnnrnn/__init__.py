"""cnnrnn: convolutional and recurrent networks in JAX/Flax.

Subpackages and modules:
- `cnnrnn.nn`: reusable layers (recurrent cells and the scan driver, conv blocks, attention,
  Transformer blocks), each usable alone in any Flax code;
- `cnnrnn.models`: architectures and the registry (`create`, `names`);
- `cnnrnn.decode`: greedy and beam-search decoding shared by every decoder;
- `cnnrnn.tasks`: losses and metrics per problem type;
- `cnnrnn.data`: TFDS builders, Grain pipelines, preprocessing, tokenisers;
- `cnnrnn.train`: the trainer (`train_and_evaluate`), checkpoints, sharding, optimizers;
- `cnnrnn.transfer`: pretrained sources, head replacement, freezing strategies;
- `cnnrnn.interop`: weight conversion to and from PyTorch;
- `cnnrnn.analysis`: conv arithmetic, parameter counts, gradient flow, attention maps;
- `cnnrnn.accel`: the opt-in seam for hardware-specific kernels;
- entry points: `cnnrnn.main` (training), `cnnrnn.sample`, `cnnrnn.translate`,
  `cnnrnn.report` (the reproduction tables).
"""

__version__ = "0.1.0"
