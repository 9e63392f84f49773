"""The DDPM UNet noise predictor (Ho et al., 2020, Appendix B) in Flax NNX.

Hot loops do not call the module: `make_apply` returns a pure function of the
`nnx.split` parameter state that `jax.jit` can trace once.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ddpm_jax import options
from ddpm_jax.models.layers import (AttnBlock, Downsample, GroupNorm, ResBlock,
                                    Upsample, default_init, zero_init)
from ddpm_jax.models.text import (AttentionPool, TextEncoder, TransformerBlock,
                                  mean_pool)

def timestep_embedding(t_B: jax.Array, dim: int, freq_shift: float = 1.0
                       ) -> jax.Array:
  """Sinusoidal embedding of (integer) timesteps, as in the paper's code
  ([sin, cos]; frequencies 10000^(-k / (half - freq_shift)): freq_shift 1 is
  the paper's, diffusers' `freq_shift`)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32)
                  / max(half - freq_shift, 1))
  args = t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def space_to_depth(x_BHWC: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/p, W/p, p*p*C]: each p×p patch becomes one pixel."""
  if p == 1:
    return x_BHWC
  B, H, W, C = x_BHWC.shape
  return x_BHWC.reshape(B, H // p, p, W // p, p, C).transpose(
      0, 1, 3, 2, 4, 5).reshape(B, H // p, W // p, p * p * C)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """The inverse of `space_to_depth`."""
  if p == 1:
    return x
  B, h, w, D = x.shape
  C = D // (p * p)
  return x.reshape(B, h, w, p, p, C).transpose(0, 1, 3, 2, 4, 5).reshape(
      B, h * p, w * p, C)


class UNet(nnx.Module):
  """The paper's UNet; `num_classes > 0` adds a class embedding (index
  `num_classes` is the null label used for classifier-free guidance).

  `patch_size` p > 1 folds each p×p patch into channels before the first
  convolution and unfolds the output (space-to-depth, as in Hoogeboom et al.,
  2023, "simple diffusion"): the UNet then runs at 1/p of the resolution.
  p = 1 is the paper's model.

  Self-attention sits at the levels `attn_levels` (0: full resolution, one
  per `ch_mult` entry), not at absolute resolutions, so a larger canvas
  (outpainting) keeps it where training put it; `attention_levels` turns a
  config's `attn_resolutions` into levels at the training size.

  `text_dim > 0` makes a text-conditioned UNet: y is then a [B, L] row of
  byte tokens, read by a `TextEncoder` (`text_layers`, `text_heads`,
  `text_max_len`) trained with the UNet, and every block at the
  `cross_attn_levels` (and the middle, if the lowest level is one of them)
  is a `TransformerBlock` with cross-attention over the text instead of
  self-attention alone. `text_pool` also adds one vector for the whole
  prompt to the time embedding (as Imagen and SDXL do): 'attention' (a
  learned query attends over the prompt), 'mean' (its mean) or '' (none).
  With `text_dim` 0 the parameter tree is the unconditional (or class)
  UNet's, unchanged.
  """

  def __init__(self, *, in_channels: int, ch: int,
               ch_mult: Sequence[int], num_res_blocks: int,
               attn_levels: Sequence[int], dropout: float = 0.0,
               num_groups: int = 32, num_classes: int = 0,
               dtype: str = 'float32', patch_size: int = 1,
               text_dim: int = 0, text_layers: int = 0, text_heads: int = 1,
               text_max_len: int = 0, cross_attn_levels: Sequence[int] = (),
               text_pool: str = '', text_conv: int = 0,
               norm_eps: float = 1e-6, attn_head_dim: int = 0,
               downsample_padding: int = 0, freq_shift: float = 1.0,
               rngs: nnx.Rngs):
    dt = jnp.dtype(dtype)
    temb_dim = 4 * ch
    self.ch = ch
    self.freq_shift = freq_shift
    eps = norm_eps
    self.num_classes = num_classes
    self.patch_size = patch_size
    in_channels *= patch_size ** 2
    self.temb1 = nnx.Linear(ch, temb_dim, kernel_init=default_init, dtype=dt,
                            rngs=rngs)
    self.temb2 = nnx.Linear(temb_dim, temb_dim, kernel_init=default_init,
                            dtype=dt, rngs=rngs)
    self.class_emb = (nnx.Embed(num_classes + 1, temb_dim, dtype=dt, rngs=rngs)
                      if num_classes > 0 else None)
    self.conv_in = nnx.Conv(in_channels, ch, (3, 3), kernel_init=default_init,
                            dtype=dt, rngs=rngs)
    self.text_encoder = (TextEncoder(text_dim, text_layers, text_heads,
                                     text_max_len, dt, conv=text_conv,
                                     rngs=rngs)
                         if text_dim else None)
    if text_pool not in options.TEXT_POOLS:
      raise ValueError(f'text_pool must be one of {options.TEXT_POOLS}, got '
                       f'{text_pool!r}')
    self.text_pooler = (AttentionPool(text_dim, text_heads, dt, rngs=rngs)
                        if text_dim and text_pool == 'attention' else None)
    self.text_pool = (nnx.Linear(text_dim, temb_dim, kernel_init=default_init,
                                 dtype=dt, rngs=rngs)
                      if text_dim and text_pool else None)

    def attention(level, c):
      if text_dim and level in cross_attn_levels:
        return TransformerBlock(c, text_dim, text_heads,
                                GroupNorm(c, num_groups, epsilon=eps, dtype=dt,
                                          rngs=rngs), dt, rngs=rngs)
      if level in attn_levels:
        return AttnBlock(c, num_groups, dt, eps=eps, head_dim=attn_head_dim,
                         rngs=rngs)
      return None

    chans = [ch]
    cur = ch
    down = []
    for level, mult in enumerate(ch_mult):
      for _ in range(num_res_blocks):
        blk = ResBlock(cur, ch * mult, temb_dim, dropout, num_groups, dt,
                       eps=eps, rngs=rngs)
        cur = ch * mult
        down.append((blk, attention(level, cur)))
        chans.append(cur)
      if level != len(ch_mult) - 1:
        down.append((Downsample(cur, dt, padding=downsample_padding,
                                rngs=rngs), None))
        chans.append(cur)
    self.down = nnx.List([nnx.List(d) for d in down])

    self.mid1 = ResBlock(cur, cur, temb_dim, dropout, num_groups, dt, eps=eps,
                         rngs=rngs)
    self.mid_attn = (attention(len(ch_mult) - 1, cur)
                     if text_dim and len(ch_mult) - 1 in cross_attn_levels
                     else AttnBlock(cur, num_groups, dt, eps=eps,
                                    head_dim=attn_head_dim, rngs=rngs))
    self.mid2 = ResBlock(cur, cur, temb_dim, dropout, num_groups, dt, eps=eps,
                         rngs=rngs)

    up = []
    for level, mult in reversed(list(enumerate(ch_mult))):
      for _ in range(num_res_blocks + 1):
        blk = ResBlock(cur + chans.pop(), ch * mult, temb_dim, dropout,
                       num_groups, dt, eps=eps, rngs=rngs)
        cur = ch * mult
        up.append((blk, attention(level, cur)))
      if level != 0:
        up.append((Upsample(cur, dt, rngs=rngs), None))
    self.up = nnx.List([nnx.List(u) for u in up])

    self.norm_out = GroupNorm(cur, num_groups, epsilon=eps, dtype=dt,
                              rngs=rngs)
    self.conv_out = nnx.Conv(cur, in_channels, (3, 3), kernel_init=zero_init,
                             dtype=dt, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array, t_B: jax.Array,
               y_B: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Predicts ε; dropout is active only when `dropout_key` is given.
    y_B: class labels, or for a text model byte tokens [B, L]."""
    keys = iter(jax.random.split(dropout_key, 64) if dropout_key is not None
                else [None] * 64)
    temb = timestep_embedding(t_B, self.ch, self.freq_shift)
    temb = self.temb2(nnx.silu(self.temb1(temb)))
    text = None
    if self.text_encoder is not None:
      text = self.text_encoder(y_B)
      if self.text_pool is not None:
        pooled = (self.text_pooler(*text) if self.text_pooler is not None
                  else mean_pool(*text))
        temb = temb + self.text_pool(pooled)
    if self.class_emb is not None:
      if y_B is None:
        y_B = jnp.full(t_B.shape, self.num_classes, jnp.int32)
      temb = temb + self.class_emb(y_B)

    p = self.patch_size
    h = self.conv_in(space_to_depth(x_BHWC, p))
    hs = [h]
    for blk, attn in self.down:
      h = blk(h, temb, next(keys)) if isinstance(blk, ResBlock) else blk(h)
      h = _attend(attn, h, text)
      hs.append(h)
    h = _attend(self.mid_attn, self.mid1(h, temb, next(keys)), text)
    h = self.mid2(h, temb, next(keys))
    for blk, attn in self.up:
      if isinstance(blk, ResBlock):
        h = blk(jnp.concatenate([h, hs.pop()], axis=-1), temb, next(keys))
      else:
        h = blk(h)
      h = _attend(attn, h, text)
    h = self.conv_out(nnx.silu(self.norm_out(h)))
    return depth_to_space(h, p).astype(jnp.float32)


def _attend(block, h, text):
  if block is None:
    return h
  if isinstance(block, TransformerBlock):
    return block(h, *text)
  return block(h)


def downsample_factor(ch_mult: Sequence[int], patch_size: int = 1) -> int:
  """What every side of the UNet's input must be a multiple of."""
  return 2 ** (len(ch_mult) - 1) * patch_size


def attention_levels(image_size: int, ch_mult: Sequence[int],
                     attn_resolutions: Sequence[int], patch_size: int = 1
                     ) -> tuple[int, ...]:
  """The levels whose resolution, at the training `image_size`, is one of
  `attn_resolutions` (the paper's way of naming them)."""
  return tuple(level for level in range(len(ch_mult))
               if image_size // patch_size // 2 ** level in attn_resolutions)


def build_unet(model_cfg, image_size: int, channels: int, num_classes: int,
                seed: int = 0, rngs=None) -> UNet:
  """Builds the UNet from the config's `model` section (its keys from
  nnx.Rngs(seed) unless `rngs` is given: abstract builds pass Keys)."""
  patch_size = model_cfg.get('patch_size', 1)
  text = model_cfg.get('text_conditional', False)
  return UNet(in_channels=channels, ch=model_cfg.ch,
              ch_mult=tuple(model_cfg.ch_mult),
              num_res_blocks=model_cfg.num_res_blocks,
              attn_levels=attention_levels(
                  image_size, model_cfg.ch_mult, model_cfg.attn_resolutions,
                  patch_size),
              dropout=model_cfg.dropout, num_groups=model_cfg.num_groups,
              num_classes=num_classes if model_cfg.class_conditional else 0,
              dtype=model_cfg.dtype, patch_size=patch_size,
              text_dim=model_cfg.text_dim if text else 0,
              text_layers=model_cfg.text_layers if text else 0,
              text_heads=model_cfg.text_heads if text else 1,
              text_max_len=model_cfg.text_max_len if text else 0,
              text_pool=model_cfg.get('text_pool', '') if text else '',
              text_conv=model_cfg.get('text_conv', 0) if text else 0,
              cross_attn_levels=attention_levels(
                  image_size, model_cfg.ch_mult,
                  model_cfg.cross_attn_resolutions, patch_size) if text else (),
              norm_eps=model_cfg.get('norm_eps', 1e-6),
              attn_head_dim=model_cfg.get('attn_head_dim', 0),
              downsample_padding=model_cfg.get('downsample_padding', 0),
              freq_shift=model_cfg.get('freq_shift', 1.0),
              rngs=nnx.Rngs(seed) if rngs is None else rngs)


ApplyFn = Callable[..., jax.Array]


def make_apply(graphdef: nnx.GraphDef) -> ApplyFn:
  """apply(params, x_BHWC, t_B, y_B=None, dropout_key=None) -> eps_BHWC."""
  def apply(params, x_BHWC, t_B, y_B=None, dropout_key=None):
    model = nnx.merge(graphdef, params)
    return model(x_BHWC, t_B, y_B, dropout_key)
  return apply
