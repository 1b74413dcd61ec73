"""Conversion between cnnrnn variables and PyTorch reference implementations.

torch is needed only for `rnn_from_torch` and for loading `.pth` files; the state-dict
converters work on any mapping of names to arrays (numpy arrays, torch tensors, or the
contents of a safetensors file).
"""

from cnnrnn.interop.torch_zoo import from_torch, to_torch
from cnnrnn.interop.torch_rnn import rnn_from_torch, rnn_to_torch
from cnnrnn.interop.torch_transformer import (decoder_block_from_torch, decoder_block_to_torch,
                                              encoder_block_from_torch, encoder_block_to_torch,
                                              mha_from_torch, mha_params_from_torch,
                                              mha_params_to_torch, transformer_from_torch,
                                              transformer_to_torch)
