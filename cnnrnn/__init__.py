"""cnnrnn: convolutional and recurrent networks in JAX/Flax.

Subpackages: `cnnrnn.nn` (reusable layers), `cnnrnn.models` (architectures and the
registry), `cnnrnn.tasks` (losses and metrics), `cnnrnn.data` (TFDS builders and Grain
pipelines), `cnnrnn.train` (the trainer), `cnnrnn.interop` (PyTorch weight conversion),
`cnnrnn.analysis` (conv arithmetic, parameter counts, gradient flow).
"""

__version__ = "0.1.0"
