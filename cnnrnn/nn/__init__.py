"""Reusable layers, each usable alone in any Flax codebase."""

from cnnrnn.nn.conv import (BN_EPSILON, BN_MOMENTUM, RESIDUAL_BLOCKS, BasicBlock,
                            BottleneckBlock, Conv, ConvBN, he_normal_fan_out, pad_shortcut,
                            torch_padding)
from cnnrnn.nn.norm import BatchNorm
from cnnrnn.nn.pooling import (AdaptiveAvgPool, AvgPool, MaxPool, adaptive_avg_pool, avg_pool,
                               max_pool)
from cnnrnn.nn.cells import CELLS, GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell, make_cell
from cnnrnn.nn.rnn import RNN, Bidirectional, StackedRNN
from cnnrnn.nn.attention import (AdditiveAttention, LuongAttention, MultiHeadAttention,
                                 make_attention_mask, make_causal_mask, masked_softmax)
from cnnrnn.nn.transformer import (Mlp, PositionalEncoding, TransformerDecoder,
                                   TransformerDecoderBlock, TransformerEncoder,
                                   TransformerEncoderBlock, gelu, sinusoidal_positions)
