"""diffusers' AutoencoderKL, as Stable Diffusion 1.x and 2.x use it, in
Flax NNX: `encode(x_BHWC) -> (mean, logvar)` of the latent Gaussian and
`decode(z_BhwC) -> x_BHWC`, images in [-1, 1], channels last, float32 out.

The module tree follows diffusers' names (encoder/down_blocks/0/resnets/1,
decoder/mid_block/attentions/0, quant_conv, ...); `params_from_diffusers`
maps a checkpoint's tensors by name, old attention names (query, key,
value, proj_attn) included. `scaling_factor` and `shift_factor` are kept
on the model for the pipeline (latents = (z - shift) * scale); the model
itself never applies them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ddpm_jax.errors import UserError
from ddpm_jax.models.torch_weights import Keys, map_tensors, random_params
from ddpm_jax.models.layers import AttnBlock, GroupNorm, ResBlock, default_init

# LDM's (and diffusers') clamp of the log-variance.
LOGVAR_RANGE = (-30.0, 20.0)
_OLD_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v',
                        'proj_attn': 'to_out.0'}


class VAESpec(NamedTuple):
  in_channels: int
  out_channels: int
  widths: tuple[int, ...]
  layers: int
  latent_channels: int
  groups: int
  mid_attention: bool
  quant_conv: bool
  post_quant_conv: bool
  scaling_factor: float
  shift_factor: float | None


def _refuse(field: str, value: Any, why: str = '') -> UserError:
  return UserError(f'vae config.json: {field}={value!r} is not supported'
                   f'{": " + why if why else ""}')


def check_config(cfg: dict) -> VAESpec:
  """The autoencoder's structure from a diffusers AutoencoderKL config; a
  field SD 1.x/2.x do not use is one UserError naming it. Fields diffusers
  does not know are ignored, as diffusers ignores them."""
  name = cfg.get('_class_name', 'AutoencoderKL')
  if name != 'AutoencoderKL':
    raise UserError(f'vae config.json describes a {name}, not an AutoencoderKL')
  widths = tuple(cfg.get('block_out_channels', (64,)))
  n = len(widths)
  for field, kind in (('down_block_types', 'DownEncoderBlock2D'),
                      ('up_block_types', 'UpDecoderBlock2D')):
    types = list(cfg.get(field, (kind,)))
    if any(t != kind for t in types):
      raise _refuse(field, types, f'only {kind}')
    if len(types) != n:
      raise _refuse(field, types, f'one per block_out_channels entry ({n})')
  if cfg.get('act_fn', 'silu') not in ('silu', 'swish'):
    raise _refuse('act_fn', cfg['act_fn'], "only 'silu'")
  for field in ('latents_mean', 'latents_std'):
    if cfg.get(field) is not None:
      raise _refuse(field, cfg[field], 'per-channel latent statistics (SDXL '
                    'and later VAEs) are not supported yet')
  groups = cfg.get('norm_num_groups', 32)
  if not isinstance(groups, int) or any(w % groups for w in widths):
    raise _refuse('norm_num_groups', groups,
                  'every block_out_channels entry must be a multiple of it')
  shift = cfg.get('shift_factor')
  return VAESpec(
      in_channels=int(cfg.get('in_channels', 3)),
      out_channels=int(cfg.get('out_channels', 3)),
      widths=widths, layers=int(cfg.get('layers_per_block', 1)),
      latent_channels=int(cfg.get('latent_channels', 4)), groups=groups,
      mid_attention=bool(cfg.get('mid_block_add_attention', True)),
      quant_conv=bool(cfg.get('use_quant_conv', True)),
      post_quant_conv=bool(cfg.get('use_post_quant_conv', True)),
      scaling_factor=float(cfg.get('scaling_factor', 0.18215)),
      shift_factor=None if shift is None else float(shift))


def _conv(cin: int, cout: int, dtype, rngs, k: int = 3, **kw) -> nnx.Conv:
  return nnx.Conv(cin, cout, (k, k), kernel_init=default_init, dtype=dtype,
                  rngs=rngs, **kw)


class Downsample2D(nnx.Module):
  """A stride-2 3×3 conv after padding one row and column at the end
  (diffusers' Downsample2D with padding=0)."""

  def __init__(self, ch: int, dtype, *, rngs: nnx.Rngs):
    self.conv = _conv(ch, ch, dtype, rngs, strides=2, padding=((0, 1), (0, 1)))

  def __call__(self, x_BHWC):
    return self.conv(x_BHWC)


class Upsample2D(nnx.Module):
  """Nearest-neighbour ×2, then a 3×3 conv."""

  def __init__(self, ch: int, dtype, *, rngs: nnx.Rngs):
    self.conv = _conv(ch, ch, dtype, rngs)

  def __call__(self, x_BHWC):
    return self.conv(jnp.repeat(jnp.repeat(x_BHWC, 2, axis=1), 2, axis=2))


class Block(nnx.Module):
  """DownEncoderBlock2D / UpDecoderBlock2D: resnets (no time embedding),
  then a Downsample2D or Upsample2D if given."""

  def __init__(self, cin: int, cout: int, layers: int, groups: int, dtype, *,
               down: bool = False, up: bool = False, rngs: nnx.Rngs):
    self.resnets = nnx.List([
        ResBlock(cin if i == 0 else cout, cout, 0, 0.0, groups, dtype,
                 eps=1e-6, rngs=rngs) for i in range(layers)])
    self.downsamplers = nnx.List([Downsample2D(cout, dtype, rngs=rngs)]) if down else None
    self.upsamplers = nnx.List([Upsample2D(cout, dtype, rngs=rngs)]) if up else None

  def __call__(self, h):
    for resnet in self.resnets:
      h = resnet(h, None, None)
    if self.downsamplers is not None:
      h = self.downsamplers[0](h)
    if self.upsamplers is not None:
      h = self.upsamplers[0](h)
    return h


class MidBlock(nnx.Module):
  """UNetMidBlock2D: resnet, single-head self-attention (if `attention`),
  resnet."""

  def __init__(self, ch: int, groups: int, attention: bool, dtype, *,
               rngs: nnx.Rngs):
    self.resnets = nnx.List([ResBlock(ch, ch, 0, 0.0, groups, dtype, eps=1e-6,
                                      rngs=rngs) for _ in range(2)])
    self.attentions = nnx.List([AttnBlock(ch, groups, dtype, eps=1e-6,
                                          rngs=rngs)]) if attention else None

  def __call__(self, h):
    h = self.resnets[0](h, None, None)
    if self.attentions is not None:
      h = self.attentions[0](h)
    return self.resnets[1](h, None, None)


class Encoder(nnx.Module):
  def __init__(self, s: VAESpec, dtype, *, rngs: nnx.Rngs):
    w, n = s.widths, len(s.widths)
    self.conv_in = _conv(s.in_channels, w[0], dtype, rngs)
    self.down_blocks = nnx.List([
        Block(w[max(l - 1, 0)], w[l], s.layers, s.groups, dtype,
              down=l != n - 1, rngs=rngs) for l in range(n)])
    self.mid_block = MidBlock(w[-1], s.groups, s.mid_attention, dtype, rngs=rngs)
    self.conv_norm_out = GroupNorm(w[-1], s.groups, epsilon=1e-6, dtype=dtype,
                                   rngs=rngs)
    self.conv_out = _conv(w[-1], 2 * s.latent_channels, dtype, rngs)

  def __call__(self, x_BHWC):
    h = self.conv_in(x_BHWC)
    for blk in self.down_blocks:
      h = blk(h)
    h = self.mid_block(h)
    return self.conv_out(nnx.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
  def __init__(self, s: VAESpec, dtype, *, rngs: nnx.Rngs):
    w, n = s.widths[::-1], len(s.widths)
    self.conv_in = _conv(s.latent_channels, w[0], dtype, rngs)
    self.mid_block = MidBlock(w[0], s.groups, s.mid_attention, dtype, rngs=rngs)
    self.up_blocks = nnx.List([
        Block(w[max(u - 1, 0)], w[u], s.layers + 1, s.groups, dtype,
              up=u != n - 1, rngs=rngs) for u in range(n)])
    self.conv_norm_out = GroupNorm(w[-1], s.groups, epsilon=1e-6, dtype=dtype,
                                   rngs=rngs)
    self.conv_out = _conv(w[-1], s.out_channels, dtype, rngs)

  def __call__(self, z_BhwC):
    h = self.mid_block(self.conv_in(z_BhwC))
    for blk in self.up_blocks:
      h = blk(h)
    return self.conv_out(nnx.silu(self.conv_norm_out(h)))


class AutoencoderKL(nnx.Module):
  """diffusers' AutoencoderKL for SD 1.x/2.x, built from its config.json
  dict (see `check_config`)."""

  def __init__(self, cfg: dict, *, dtype: Any = 'float32', rngs: nnx.Rngs):
    s = check_config(cfg)
    dtype = jnp.dtype(dtype)
    self.dtype = dtype
    self.scaling_factor, self.shift_factor = s.scaling_factor, s.shift_factor
    self.latent_channels = s.latent_channels
    self.encoder = Encoder(s, dtype, rngs=rngs)
    self.decoder = Decoder(s, dtype, rngs=rngs)
    z2 = 2 * s.latent_channels
    self.quant_conv = _conv(z2, z2, dtype, rngs, k=1) if s.quant_conv else None
    self.post_quant_conv = (_conv(s.latent_channels, s.latent_channels, dtype,
                                  rngs, k=1) if s.post_quant_conv else None)

  @classmethod
  def from_config(cls, cfg: dict, dtype: Any = 'float32',
                  rngs: nnx.Rngs | None = None) -> 'AutoencoderKL':
    """The model of a diffusers config dict: with `rngs`, nnx's own
    initialisation (eager: slow at SD's size); without, `build_vae`'s."""
    return build_vae(cfg, dtype) if rngs is None else cls(cfg, dtype=dtype, rngs=rngs)

  def encode(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) of the latent Gaussian, logvar clamped as diffusers
    does, both [B, H/f, W/f, latent_channels] float32 (no scaling)."""
    h = self.encoder(x_BHWC.astype(self.dtype))
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z_BhwC: jax.Array) -> jax.Array:
    """The image (about [-1, 1], unclipped) of unscaled latents."""
    z = z_BhwC.astype(self.dtype)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)


def abstract_vae(cfg: dict, dtype: Any = 'float32') -> AutoencoderKL:
  """The autoencoder with parameter shapes only (nothing allocated)."""
  return nnx.eval_shape(lambda: AutoencoderKL(cfg, dtype=dtype, rngs=Keys(0)))


def build_vae(cfg: dict, dtype: Any = 'float32', seed: int = 0) -> AutoencoderKL:
  """A model with random parameters (torch_weights.random_params)."""
  return random_params(abstract_vae(cfg, dtype), seed)


class VAEFns(NamedTuple):
  """Pure functions of the parameters (a pure dict or nnx.State), for jit."""
  encode: Callable   # encode(params, x_BHWC) -> (mean, logvar)
  decode: Callable   # decode(params, z_BhwC) -> x_BHWC


def make_vae_fns(graphdef: nnx.GraphDef) -> VAEFns:
  return VAEFns(lambda params, x: nnx.merge(graphdef, params).encode(x),
                lambda params, z: nnx.merge(graphdef, params).decode(z))


def vae_from_diffusers(cfg: dict, tensors: dict[str, np.ndarray],
                       dtype: Any = 'float32') -> tuple[nnx.GraphDef, dict]:
  """(graphdef, params) of a diffusers AutoencoderKL: its config dict and
  tensors."""
  model = abstract_vae(cfg, dtype)
  return nnx.split(model, nnx.Param)[0], params_from_diffusers(tensors, model)


# --- diffusers' tensors -> our parameters ---------------------------------

_ATTN = {'norm': ['group_norm'], 'qkv': ['to_q', 'to_k', 'to_v'],
         'proj': ['to_out.0']}
_RESNET = {'skip': ['conv_shortcut']}


def _sources(module: str) -> list[str]:
  """The diffusers module name(s) our module (a '/' path) comes from; more
  than one are concatenated along the output axis."""
  *head, name = module.split('/')
  if len(head) >= 2 and head[-2] == 'attentions' and name in _ATTN:
    names = _ATTN[name]
  elif len(head) >= 2 and head[-2] == 'resnets' and name in _RESNET:
    names = _RESNET[name]
  else:
    names = [name]
  return ['.'.join(head + [x]) for x in names]


def params_from_diffusers(tensors: dict[str, np.ndarray],
                          model: AutoencoderKL) -> dict:
  """Our parameters (a pure dict, the structure of
  nnx.to_pure_dict(nnx.state(model, nnx.Param))) from a diffusers
  AutoencoderKL's tensors; `model` may be abstract. A missing, unused or
  misshapen tensor is one UserError."""
  renamed = {}
  for k, v in tensors.items():
    parts = k.split('.')
    if len(parts) >= 2 and parts[-2] in _OLD_ATTENTION_NAMES:
      k = '.'.join(parts[:-2] + [_OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
    renamed[k] = v
  return map_tensors(renamed, model, _sources)