"""A small AutoencoderKL (Rombach et al., 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", Appendix G; CompVis/latent-diffusion's
`ldm/modules/diffusionmodules/model.py`) in Flax NNX.

The encoder (res blocks of GroupNorm + SiLU, a stride-2 conv between levels,
a middle block with self-attention) ends in the mean and log-variance of a
diagonal Gaussian over `z_channels` channels at 1/f of the image's size,
f = 2^(len(ch_mult) - 1); the decoder mirrors it. As in the UNet, hot loops
use pure functions of the `nnx.split` parameters (`make_ae_fns`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ddpm_jax.models.layers import (AttnBlock, Downsample, GroupNorm, ResBlock,
                                    Upsample, default_init)


class Encoder(nnx.Module):
  def __init__(self, *, in_channels: int, ch: int, ch_mult: Sequence[int],
               num_res_blocks: int, z_channels: int, num_groups: int,
               dtype, rngs: nnx.Rngs):
    self.conv_in = nnx.Conv(in_channels, ch, (3, 3), kernel_init=default_init,
                            dtype=dtype, rngs=rngs)
    blocks, cur = [], ch
    for level, mult in enumerate(ch_mult):
      for _ in range(num_res_blocks):
        blocks.append(ResBlock(cur, ch * mult, 0, 0.0, num_groups, dtype,
                               rngs=rngs))
        cur = ch * mult
      if level != len(ch_mult) - 1:
        blocks.append(Downsample(cur, dtype, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.mid1 = ResBlock(cur, cur, 0, 0.0, num_groups, dtype, rngs=rngs)
    self.mid_attn = AttnBlock(cur, num_groups, dtype, rngs=rngs)
    self.mid2 = ResBlock(cur, cur, 0, 0.0, num_groups, dtype, rngs=rngs)
    self.norm_out = GroupNorm(cur, num_groups, epsilon=1e-6, dtype=dtype,
                              rngs=rngs)
    self.conv_out = nnx.Conv(cur, 2 * z_channels, (3, 3),
                             kernel_init=default_init, dtype=dtype, rngs=rngs)
    self.moments = nnx.Conv(2 * z_channels, 2 * z_channels, (1, 1),
                            kernel_init=default_init, dtype=dtype, rngs=rngs)

  def __call__(self, x_BHWC):
    h = self.conv_in(x_BHWC)
    for blk in self.blocks:
      h = blk(h, None, None) if isinstance(blk, ResBlock) else blk(h)
    h = self.mid2(self.mid_attn(self.mid1(h, None, None)), None, None)
    h = self.conv_out(nnx.silu(self.norm_out(h)))
    return self.moments(h).astype(jnp.float32)


class Decoder(nnx.Module):
  def __init__(self, *, out_channels: int, ch: int, ch_mult: Sequence[int],
               num_res_blocks: int, z_channels: int, num_groups: int,
               dtype, rngs: nnx.Rngs):
    cur = ch * ch_mult[-1]
    self.post = nnx.Conv(z_channels, z_channels, (1, 1),
                         kernel_init=default_init, dtype=dtype, rngs=rngs)
    self.conv_in = nnx.Conv(z_channels, cur, (3, 3), kernel_init=default_init,
                            dtype=dtype, rngs=rngs)
    self.mid1 = ResBlock(cur, cur, 0, 0.0, num_groups, dtype, rngs=rngs)
    self.mid_attn = AttnBlock(cur, num_groups, dtype, rngs=rngs)
    self.mid2 = ResBlock(cur, cur, 0, 0.0, num_groups, dtype, rngs=rngs)
    blocks = []
    for level, mult in reversed(list(enumerate(ch_mult))):
      for _ in range(num_res_blocks + 1):
        blocks.append(ResBlock(cur, ch * mult, 0, 0.0, num_groups, dtype,
                               rngs=rngs))
        cur = ch * mult
      if level != 0:
        blocks.append(Upsample(cur, dtype, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.norm_out = GroupNorm(cur, num_groups, epsilon=1e-6, dtype=dtype,
                              rngs=rngs)
    self.conv_out = nnx.Conv(cur, out_channels, (3, 3),
                             kernel_init=default_init, dtype=dtype, rngs=rngs)

  def __call__(self, z_BhwZ):
    h = self.conv_in(self.post(z_BhwZ))
    h = self.mid2(self.mid_attn(self.mid1(h, None, None)), None, None)
    for blk in self.blocks:
      h = blk(h, None, None) if isinstance(blk, ResBlock) else blk(h)
    return self.conv_out(nnx.silu(self.norm_out(h))).astype(jnp.float32)


class Autoencoder(nnx.Module):
  """AutoencoderKL: `encoder(x)` gives [mean, logvar] stacked on channels."""

  def __init__(self, *, channels: int, ch: int, ch_mult: Sequence[int],
               num_res_blocks: int, z_channels: int, num_groups: int = 32,
               dtype: str = 'float32', rngs: nnx.Rngs):
    dt = jnp.dtype(dtype)
    kw = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
              z_channels=z_channels, num_groups=num_groups, dtype=dt, rngs=rngs)
    self.encoder = Encoder(in_channels=channels, **kw)
    self.decoder = Decoder(out_channels=channels, **kw)


def build_autoencoder(ae_cfg, channels: int, seed: int = 0,
                      rngs=None) -> Autoencoder:
  """The autoencoder of a config's `autoencoder` section (its keys from
  nnx.Rngs(seed) unless `rngs` is given: abstract builds pass Keys)."""
  return Autoencoder(channels=channels, ch=ae_cfg.ch, ch_mult=tuple(ae_cfg.ch_mult),
                     num_res_blocks=ae_cfg.num_res_blocks,
                     z_channels=ae_cfg.z_channels, num_groups=ae_cfg.num_groups,
                     dtype=ae_cfg.dtype,
                     rngs=nnx.Rngs(seed) if rngs is None else rngs)


class Posterior(NamedTuple):
  """The encoder's diagonal Gaussian q(z | x)."""
  mean: jax.Array
  logvar: jax.Array

  def sample(self, key: jax.Array) -> jax.Array:
    return self.mean + jnp.exp(0.5 * self.logvar) * jax.random.normal(
        key, self.mean.shape, self.mean.dtype)

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) per example, summed over the latent's elements."""
    return 0.5 * jnp.sum(jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0
                         - self.logvar, axis=(1, 2, 3))


# LDM clamps the log-variance to this range.
LOGVAR_RANGE = (-30.0, 20.0)


class AutoencoderFns(NamedTuple):
  """Pure functions of the autoencoder's parameters (no scale applied)."""
  encode: Callable        # encode(params, x_BHWC) -> Posterior
  decode: Callable        # decode(params, z) -> x_BHWC
  reconstruct: Callable   # the posterior mean decoded, clipped to [-1, 1]


def make_ae_fns(graphdef: nnx.GraphDef) -> AutoencoderFns:
  def encode(params, x_BHWC):
    moments = nnx.merge(graphdef, params).encoder(x_BHWC)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return Posterior(mean, jnp.clip(logvar, *LOGVAR_RANGE))

  def decode(params, z):
    return nnx.merge(graphdef, params).decoder(z)

  def reconstruct(params, x_BHWC):
    return jnp.clip(decode(params, encode(params, x_BHWC).mean), -1.0, 1.0)
  return AutoencoderFns(encode, decode, reconstruct)


def reconstruction_loss(x_BHWC: jax.Array, x_rec: jax.Array, kind: str
                        ) -> jax.Array:
  """Mean over the batch of the per-image sum of |x - x̂| (l1) or (x - x̂)² (l2)."""
  d = x_BHWC - x_rec
  per = jnp.abs(d) if kind == 'l1' else jnp.square(d)
  return jnp.mean(jnp.sum(per, axis=(1, 2, 3)))


def make_ae_loss(fns: AutoencoderFns, kind: str, kl_weight: float) -> Callable:
  """loss(params, x_BHWC, key) -> (loss, (reconstruction, kl)): LDM's
  reconstruction + β·KL, both summed per image and averaged over the batch."""
  def loss(params, x_BHWC, key):
    post = fns.encode(params, x_BHWC)
    rec = reconstruction_loss(x_BHWC, fns.decode(params, post.sample(key)), kind)
    kl = jnp.mean(post.kl())
    return rec + kl_weight * kl, (rec, kl)
  return loss
