"""The autoencoder side of latent diffusion (Rombach et al., 2022).

- `latent_scale`: 1 / std of the encoder's posterior samples over training
  images (Stable Diffusion's 0.18215), stored in every autoencoder
  checkpoint's metadata;
- `restore_autoencoder`: a trained autoencoder's config, EMA parameters and
  scale, read from its workdir;
- `attach_autoencoder`: a latent model's config with the autoencoder's
  config section (replacing the one the config declared), scale and
  fingerprint filled in, so that the latent model's checkpoints are
  self-contained;
- `make_codec`: encode/decode between pixels and scaled latents, for the
  samplers; `joint_params` and `unet_apply`: a latent model's parameters
  {'unet', 'autoencoder'} as one tree, and the UNet's apply on that tree.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from ddpm_jax import config as config_lib
from ddpm_jax import data as data_lib
from ddpm_jax import files
from ddpm_jax.checkpoint import Checkpointer
from ddpm_jax.errors import UserError
from ddpm_jax.models.autoencoder import (AutoencoderFns, build_autoencoder,
                                         make_ae_fns)
from ddpm_jax.models.layers import abstract_params
from ddpm_jax.sampling import Codec


def latent_scale(encode, params, source: data_lib.Source, config,
                 batch: int = 250) -> float:
  """1 / std of posterior samples z ~ q(z | x) over the first
  `autoencoder.scale_images` training images (one fixed key)."""
  n = min(len(source), int(config.autoencoder.scale_images))
  size, resize = config.data.image_size, config.data.resize

  @jax.jit
  def sample(params, images, key):
    x = data_lib.preprocess(images, size, False, None, resize)
    return encode(params, x).sample(key)

  s1 = s2 = count = 0.0
  for i in range(0, n, batch):
    images, _ = source.read(np.arange(i, min(i + batch, n)))
    z = np.asarray(sample(params, images, jax.random.key(i)), np.float64)
    s1, s2, count = s1 + z.sum(), s2 + np.square(z).sum(), count + z.size
  std = float(np.sqrt(max(s2 / count - (s1 / count) ** 2, 0.0)))
  return 1.0 / std if std > 0 else 1.0


def fingerprint(params: Any, scale: float) -> str:
  """A short hash of an autoencoder's parameters and scale."""
  h = hashlib.sha256(np.float64(scale).tobytes())
  for leaf in jax.tree.leaves(params):
    h.update(np.asarray(leaf).tobytes())
  return h.hexdigest()[:16]


def abstract_autoencoder(ae_cfg, channels: int) -> tuple[nnx.GraphDef, Any]:
  """(graphdef, parameter shapes) of an `autoencoder` config section."""
  from ddpm_jax.models.torch_weights import Keys  # fast: see abstract_model
  return abstract_params(lambda: build_autoencoder(ae_cfg, channels,
                                                   rngs=Keys(0)))


def autoencoder_fns(ae_cfg, channels: int) -> AutoencoderFns:
  """The pure encode/decode/reconstruct of an `autoencoder` config section."""
  graphdef, _ = abstract_autoencoder(ae_cfg, channels)
  return make_ae_fns(graphdef)


def restore_autoencoder(workdir: str, step: int, mesh: Mesh
                        ) -> tuple[ml_collections.ConfigDict, Any, float, int]:
  """(the autoencoder's config, EMA params, scale, step) from its workdir;
  step < 0: the latest."""
  if not files.isdir(workdir):
    raise UserError(f'autoencoder workdir {workdir} does not exist; train it '
                    'first (e.g. configs/mnist_autoencoder.py)')
  with Checkpointer(workdir, read_only=True) as ckpt:
    step, meta = ckpt.read_meta(None if step < 0 else step)
    cfg = config_lib.config_from_dict(meta['config'])
    kind = config_lib.model_kind(cfg)
    if not kind.autoencoder:
      raise UserError(f'{workdir} holds a {kind.task} model, not an autoencoder')
    if 'latent_scale' not in meta:
      raise UserError(f'the autoencoder checkpoint {step} in {workdir} has no '
                      'latent scale')
    _, abstract = abstract_autoencoder(cfg.autoencoder, cfg.data.channels)
    params = ckpt.restore_params(step, 'ema_params', abstract, mesh)
  return cfg, params, float(meta['latent_scale']), step


def attach_autoencoder(config, mesh: Mesh) -> tuple[ml_collections.ConfigDict, Any]:
  """(a copy of the latent model's config with its autoencoder filled in,
  the autoencoder's params); refuses an autoencoder of other images or one
  whose latent the UNet cannot take, with one line."""
  lat = config.latent
  ae_cfg, params, scale, step = restore_autoencoder(
      lat.autoencoder_workdir, lat.autoencoder_step, mesh)
  d, ad = config.data, ae_cfg.data
  if (ad.image_size, ad.channels, ad.resize) != (d.image_size, d.channels, d.resize):
    raise UserError(
        f'the autoencoder in {lat.autoencoder_workdir} was trained on '
        f'{ad.image_size}x{ad.image_size}x{ad.channels} images ({ad.resize}); '
        f'this config has data.image_size={d.image_size}, data.channels='
        f'{d.channels}, data.resize={d.resize}')
  out = ml_collections.ConfigDict(config.to_dict())
  out.autoencoder = ml_collections.ConfigDict(ae_cfg.autoencoder.to_dict())
  out.latent.scale = scale
  out.latent.fingerprint = fingerprint(params, scale)
  config_lib.validate(out, jax.device_count())
  return out, params


def make_codec(config) -> Codec:
  """Pixels <-> scaled latents for a latent model's samplers; `params` is
  {'unet': ..., 'autoencoder': ...}. Encoding takes the posterior mean."""
  fns = autoencoder_fns(config.autoencoder, config.data.channels)
  scale = float(config.latent.scale)

  def encode(params, x_BHWC):
    return scale * fns.encode(params['autoencoder'], x_BHWC).mean

  def decode(params, z):
    return jnp.clip(fns.decode(params['autoencoder'], z / scale), -1.0, 1.0)
  return Codec(encode, decode, config_lib.autoencoder_factor(config.autoencoder))


def joint_params(unet: Any, autoencoder: Any) -> dict[str, Any]:
  """A latent model's parameters as the one tree its apply and codec take."""
  return {'unet': unet, 'autoencoder': autoencoder}


def unet_apply(apply):
  """The UNet's apply(params, ...) as a function of `joint_params`."""
  return lambda params, *args: apply(params['unet'], *args)
