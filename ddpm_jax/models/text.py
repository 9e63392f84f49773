"""Text conditioning: a small pre-LN transformer text encoder over byte
tokens, and the cross-attention transformer block the UNet places at the
levels a text config names (Rombach et al., 2022, sec. 3.3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ddpm_jax import tokenizer
from ddpm_jax.models.layers import Attention, FeedForward, default_init, zero_init


class EncoderLayer(nnx.Module):
  """Pre-LN: x + attn(LN x), then x + mlp(LN x)."""

  def __init__(self, dim: int, heads: int, dtype, *, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, dim, heads, dtype, rngs=rngs)
    self.ln2 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
    self.mlp = FeedForward(dim, 4, dtype, rngs=rngs)

  def __call__(self, x_BLD, mask_BL):
    h = self.ln1(x_BLD)
    x_BLD = x_BLD + self.attn(h, h, mask_BL)
    return x_BLD + self.mlp(self.ln2(x_BLD))


class TextEncoder(nnx.Module):
  """tokens [B, L] -> (context [B, L, D], mask [B, L]): byte embeddings plus
  learned positions through `layers` pre-LN transformer layers that attend
  only to BOS..EOS (tokenizer.attention_mask), then a final LayerNorm.

  With `conv` > 0 a residual 1-D convolution of that width first mixes
  neighbouring bytes (padding zeroed, so nothing after EOS is read): each
  position then sees a few letters of its word, as character-level models
  (CANINE, Charformer) do before their transformer."""

  def __init__(self, dim: int, layers: int, heads: int, max_len: int, dtype,
               *, conv: int = 0, rngs: nnx.Rngs):
    self.embed = nnx.Embed(tokenizer.VOCAB_SIZE, dim, dtype=dtype, rngs=rngs)
    self.conv = (nnx.Conv(dim, dim, (conv,), padding='SAME',
                          kernel_init=default_init, dtype=dtype, rngs=rngs)
                 if conv else None)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_len, dim)))
    self.layers = nnx.List([EncoderLayer(dim, heads, dtype, rngs=rngs)
                            for _ in range(layers)])
    self.norm = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)

  def __call__(self, tokens_BL: jax.Array) -> tuple[jax.Array, jax.Array]:
    mask_BL = tokenizer.attention_mask(tokens_BL)
    x = self.embed(tokens_BL)
    if self.conv is not None:
      x = x * mask_BL[..., None].astype(x.dtype)
      x = x + self.conv(x)
    x = x + self.pos[...][None, :tokens_BL.shape[1]].astype(x.dtype)
    for layer in self.layers:
      x = layer(x, mask_BL)
    return self.norm(x), mask_BL


def mean_pool(context_BLD: jax.Array, mask_BL: jax.Array) -> jax.Array:
  """The mean of the encoder's output over BOS..EOS: [B, L, D] -> [B, D]."""
  m = mask_BL[..., None].astype(context_BLD.dtype)
  return (context_BLD * m).sum(1) / m.sum(1)


class AttentionPool(nnx.Module):
  """One learned query attending over BOS..EOS: [B, L, D] -> [B, D]. Unlike
  the mean it can learn to read the words that name the class and skip the
  template around them (Imagen pools its text this way)."""

  def __init__(self, dim: int, heads: int, dtype, *, rngs: nnx.Rngs):
    self.query = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, dim)))
    self.attn = Attention(dim, dim, heads, dtype, rngs=rngs)

  def __call__(self, context_BLD: jax.Array, mask_BL: jax.Array) -> jax.Array:
    B, _, D = context_BLD.shape
    q = jnp.broadcast_to(self.query[...].astype(context_BLD.dtype), (B, 1, D))
    return self.attn(q, context_BLD, mask_BL)[:, 0]


class TransformerBlock(nnx.Module):
  """The UNet's text block: GroupNorm and a projection in, then
  self-attention, cross-attention over the text (padding masked) and a
  feed-forward layer, each pre-LN and residual, and a zero-initialised
  projection out added to the input."""

  def __init__(self, ch: int, context_dim: int, heads: int, norm, dtype, *,
               rngs: nnx.Rngs):
    self.norm = norm
    self.proj_in = nnx.Linear(ch, ch, kernel_init=default_init, dtype=dtype,
                              rngs=rngs)
    self.ln1 = nnx.LayerNorm(ch, dtype=dtype, rngs=rngs)
    self.attn1 = Attention(ch, ch, heads, dtype, rngs=rngs)
    self.ln2 = nnx.LayerNorm(ch, dtype=dtype, rngs=rngs)
    self.attn2 = Attention(ch, context_dim, heads, dtype, rngs=rngs)
    self.ln3 = nnx.LayerNorm(ch, dtype=dtype, rngs=rngs)
    self.ff = FeedForward(ch, 4, dtype, rngs=rngs)
    self.proj_out = nnx.Linear(ch, ch, kernel_init=zero_init, dtype=dtype,
                               rngs=rngs)

  def __call__(self, x_BHWC, context_BLD, mask_BL):
    B, H, W, C = x_BHWC.shape
    h = self.proj_in(self.norm(x_BHWC)).reshape(B, H * W, C)
    a = self.ln1(h)
    h = h + self.attn1(a, a)
    h = h + self.attn2(self.ln2(h), context_BLD, mask_BL)
    h = h + self.ff(self.ln3(h))
    return x_BHWC + self.proj_out(h).reshape(B, H, W, C)
