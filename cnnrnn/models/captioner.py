"""Image captioning with visual attention: Show, Attend and Tell (Xu et al. 2015), soft attention.

Encoder: a zoo CNN without its head whose last feature map [B, H', W', D] gives the L = H' W'
annotation vectors a_i [B, L, D] (for `conv_stack`: `dense=()` and `global_pool=False`).
Decoder: an LSTM whose initial memory and state are MLPs of the mean annotation,
c_0 = tanh(f_c(mean_i a_i)), h_0 = tanh(f_h(mean_i a_i)); at step t

    alpha_t  = softmax_i(v^T tanh(W h_{t-1} + U a_i + b))       (`cnnrnn.nn.AdditiveAttention`)
    beta_t   = sigmoid(f_beta(h_{t-1}))                          (the gating scalar, sec. 4.2.1)
    z_t      = beta_t * sum_i alpha_ti a_i
    (c_t, h_t) = LSTM((c_{t-1}, h_{t-1}), [E y_{t-1}, z_t])
    logits_t = L_o(E y_{t-1} + L_h h_t + L_z z_t)                 (the deep output, eq. 7)

The doubly stochastic regulariser lambda * sum_i (1 - sum_t alpha_ti)^2 is the task's
(`cnnrnn.tasks.captioning`); the model returns the weights alpha [B, T, L] for it.

`attention=False` is the experiment's baseline: the image enters only through the initial
state (mean-pooled features), the LSTM reads the words alone, and there is no z_t.

One decoder step (`CaptionDecoderStep`) serves both teacher forcing (scanned over the
target with `nn.scan`) and decoding (`decode_step`, one call per token, its carry in the
"cache" collection), so greedy and beam search through `cnnrnn.decode.generate` compute
exactly the teacher-forced model. Token ids follow `cnnrnn.decode`: pad 0, bos 2, eos 3.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnrnn.decode import PAD_ID
from cnnrnn.models.video_classifier import headless_image_model
from cnnrnn.nn.attention import AdditiveAttention
from cnnrnn.nn.cells import LSTMCell

Array = jax.Array
Carry = tuple[Array, Array]


class CaptionDecoderStep(nn.Module):
  """One step of the attention LSTM decoder (equations in the module docstring).

  Parameters: `embed/embedding` [V, E], `attention/...` (query [H, A], key [D, A], energy
  [A, 1]), `beta/kernel` [H, 1], `lstm/...` (input [E + D, 4H], recurrent [H, 4H]),
  `out_h/kernel` [H, E], `out_z/kernel` [D, E], `head/kernel` [E, V] and biases. Without
  attention: no `attention`, `beta`, `out_z`, and the LSTM input is [E].

  Attributes: as `Captioner`'s of the same names.
  """

  vocab_size: int
  embed_size: int
  hidden_size: int
  attention_size: int
  attention: bool = True
  gate: bool = True
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: Carry, tokens: Array, annotations: Array, train: bool = False):
    """Args:
      carry: (c, h), each [N, H].
      tokens: [N] previous tokens y_{t-1}.
      annotations: [N, L, D].
      train: enables dropout (needs a "dropout" rng).

    Returns:
      (new carry, (logits [N, V], alpha [N, L] or None without attention)).
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    emb = nn.Embed(self.vocab_size, self.embed_size, name="embed", **kw)(tokens)  # [N, E]
    _, h = carry
    alpha = None
    inputs = emb
    if self.attention:
      context, alpha = AdditiveAttention(self.attention_size, name="attention", **kw)(
          h, annotations)  # [N, D], [N, L]
      if self.gate:
        context = nn.sigmoid(nn.Dense(1, name="beta", **kw)(h)) * context
      inputs = jnp.concatenate([emb, context], axis=-1)  # [N, E + D]
    carry, h = LSTMCell(self.hidden_size, name="lstm", **kw)(carry, inputs)
    out = emb + nn.Dense(self.embed_size, name="out_h", **kw)(h)
    if self.attention:
      out = out + nn.Dense(self.embed_size, name="out_z", **kw)(context)
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    return carry, (nn.Dense(self.vocab_size, name="head", **kw)(out), alpha)


class CarryCache(nn.Module):
  """The decoder's carry in the "cache" collection: `cache(carry)` stores, `cache()` reads."""

  @nn.compact
  def __call__(self, carry: Carry | None = None) -> Carry:
    var = self.variable("cache", "carry", lambda: carry)
    if carry is not None:
      var.value = carry
    return var.value


class Captioner(nn.Module):
  """CNN encoder + attention LSTM decoder over token ids; the `cnnrnn.decode` protocol.

  Parameters: `encoder/...` (the image model's, head excluded), `init_c/...`, `init_h/...`
  (the initial-state MLPs, one hidden tanh layer each), `decoder/...` (`CaptionDecoderStep`).

  Attributes:
    vocab_size: V (ids: pad 0, bos 2, eos 3).
    encoder: registry name of the CNN; created with num_classes=0 and `encoder_kwargs`, it
      must return a feature grid [B, H', W', D].
    encoder_kwargs: the CNN's keyword arguments (never num_classes).
    embed_size: E, the word embedding (and deep output) width.
    hidden_size: H of the LSTM.
    attention_size: A, the attention MLP width.
    attention: soft attention (False: the mean-pooled features only set the initial state).
    gate: the gating scalar beta.
    dropout: on the deep output before the vocabulary projection.
    pad_id: the padding token id.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  vocab_size: int
  encoder: str = "conv_stack"
  encoder_kwargs: Mapping[str, Any] | None = None
  embed_size: int = 64
  hidden_size: int = 128
  attention_size: int = 64
  attention: bool = True
  gate: bool = True
  dropout: float = 0.0
  pad_id: int = PAD_ID
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.cnn = headless_image_model(self.encoder, self.encoder_kwargs, name="encoder", **kw)
    self.init_c = nn.Sequential([nn.Dense(self.hidden_size, **kw), jnp.tanh,
                                 nn.Dense(self.hidden_size, **kw), jnp.tanh])
    self.init_h = nn.Sequential([nn.Dense(self.hidden_size, **kw), jnp.tanh,
                                 nn.Dense(self.hidden_size, **kw), jnp.tanh])
    self.decoder = CaptionDecoderStep(
        self.vocab_size, self.embed_size, self.hidden_size, self.attention_size,
        self.attention, self.gate, self.dropout, **kw)
    self.cache = CarryCache()

  def encode(self, images: Array, train: bool = False) -> dict:
    """Args: images [B, H, W, C]. Returns: {"annotations": [B, L, D]}, L = H' W'.

    Raises:
      ValueError: the encoder does not return a feature grid.
    """
    grid = self.cnn(images.astype(self.dtype), train)
    if grid.ndim != 4:
      raise ValueError(f"the captioner's encoder {self.encoder!r} returned features of shape "
                       f"{grid.shape}, not a grid [B, H', W', D]: it needs the last conv map "
                       "(for conv_stack set encoder_kwargs dense=() and global_pool=False)")
    b, h, w, d = grid.shape
    return {"annotations": grid.reshape(b, h * w, d)}

  def initial_carry(self, annotations: Array) -> Carry:
    """(c_0, h_0) [B, H] from the mean annotation."""
    mean = annotations.mean(axis=1)  # [B, D]
    return self.init_c(mean), self.init_h(mean)

  def decode(self, encoded: dict, tgt_in: Array, train: bool = False,
             return_attention: bool = False):
    """Teacher forcing: [B, T] inputs (BOS first) -> logits [B, T, V] (and alpha [B, T, L],
    None without attention), the decoder step scanned over time."""
    annotations = encoded["annotations"]

    def body(step, carry, tokens, annotations):
      return step(carry, tokens, annotations, train)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False,
                                                                   "dropout": True},
                   in_axes=(1, nn.broadcast), out_axes=1)
    _, (logits, alpha) = scan(self.decoder, self.initial_carry(annotations), tgt_in,
                              annotations)
    return (logits, alpha) if return_attention else logits

  def __call__(self, images: Array, tgt_in: Array, train: bool = False, *,
               return_attention: bool = False):
    """Teacher-forced forward pass.

    Args:
      images: [B, H, W, C].
      tgt_in: [B, T] caption inputs (BOS, then the caption shifted right).
      train: training mode (dropout, BatchNorm statistics).
      return_attention: also return the attention weights.

    Returns:
      logits [B, T, V], or (logits, alpha [B, T, L] or None without attention).
    """
    return self.decode(self.encode(images, train), tgt_in, train, return_attention)

  def init_cache(self, encoded: dict, max_len: int) -> None:
    """Creates the "cache" collection (call with `mutable=["cache"]`): the LSTM carry (c, h)
    [B, H] initialised from the mean annotation. `max_len` is unused (the carry does not
    grow)."""
    del max_len
    self.cache(self.initial_carry(encoded["annotations"]))

  def decode_step(self, encoded: dict, tokens: Array) -> Array:
    """One decoding step (call with `mutable=["cache"]`): tokens [N] -> logits [N, V]."""
    carry, (logits, _) = self.decoder(self.cache(), tokens, encoded["annotations"])
    self.cache(carry)
    return logits
