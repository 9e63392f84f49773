"""The base config every file in configs/ overrides, its validation, and
every `*_from_config` factory (betas, schedule, model, sampler)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import ml_collections
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax import samplers as samplers_lib
from ddpm_jax.errors import UserError
from ddpm_jax.schedules import BETA_SCHEDULES, Schedule, get_betas, make_schedule


class ConfigError(UserError):
  """A config that cannot run; the message is one line for the user."""


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as config_flags would load it."""
  import importlib.util
  import os
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path} does not exist')
  spec = importlib.util.spec_from_file_location('_ddpm_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'mnist5k'       # 'mnist5k' (embedded) or a TFDS name
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.split = 'train'
  c.data.image_size = 28        # images are brought to this size if it differs:
  c.data.resize = 'bilinear'    # resized, or 'pad': centred on black (-1)
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False
  c.data.captions = 'digits'    # text models: 'digits' or 'fashion' (captions.py)

  c.model = ml_collections.ConfigDict()
  c.model.ch = 32
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (14,)
  c.model.dropout = 0.0           # the paper uses 0.1 on CIFAR-10 (configs/cifar10.py)
  c.model.num_groups = 8
  c.model.class_conditional = False
  c.model.dtype = 'float32'
  c.model.patch_size = 1          # >1: space-to-depth before the UNet
  # Text prompts (instead of class labels): a byte-token transformer encoder
  # trained with the UNet, read by cross-attention at these resolutions; the
  # captions come from the labels (data.captions).
  c.model.text_conditional = False
  c.model.text_dim = 64
  c.model.text_layers = 1
  c.model.text_heads = 4
  c.model.text_max_len = 48       # tokens, BOS and EOS included
  c.model.text_conv = 5           # width of a byte convolution before the encoder (0: none)
  c.model.cross_attn_resolutions = ()
  c.model.text_pool = 'attention'  # one vector for the prompt, added to the time
                                   # embedding: 'attention', 'mean' or ''

  # 'diffusion' trains the UNet; 'autoencoder' trains the KL autoencoder of
  # the `autoencoder` section (for latent diffusion), with the same loop.
  c.task = 'diffusion'

  c.autoencoder = ml_collections.ConfigDict()
  c.autoencoder.ch = 32
  c.autoencoder.ch_mult = (1, 2, 2)   # f = 2^(levels - 1) = 4
  c.autoencoder.num_res_blocks = 1
  c.autoencoder.z_channels = 4
  c.autoencoder.num_groups = 8
  c.autoencoder.dtype = 'float32'
  c.autoencoder.loss = 'l1'           # reconstruction: 'l1' or 'l2'
  c.autoencoder.kl_weight = 1e-6      # LDM's β
  c.autoencoder.scale_images = 5000   # training images whose latent std gives the scale

  # A diffusion model in an autoencoder's latent space: name the autoencoder's
  # workdir (and step; -1: its latest). Training copies the autoencoder (its
  # config, EMA parameters and latent scale) into this model's checkpoints.
  c.latent = ml_collections.ConfigDict()
  c.latent.autoencoder_workdir = ''
  c.latent.autoencoder_step = -1
  # A latent config declares its autoencoder's shape in `autoencoder` (the
  # UNet's input is data.image_size / f by z_channels); training replaces
  # that section with the trained autoencoder's and fills in (not for users):
  c.latent.scale = 0.0
  c.latent.fingerprint = ''

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = 'linear'
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4   # linear and sigmoid only: the cosine
  c.diffusion.beta_end = 0.02     # schedule is defined by its ᾱ alone
  c.diffusion.prediction = 'eps'  # what the UNet predicts: 'eps', 'x0' or 'v'
  c.diffusion.loss_weighting = 'none'  # or 'min_snr' (Hang et al., 2023)
  c.diffusion.min_snr_gamma = 5.0

  c.training = ml_collections.ConfigDict()
  c.training.batch_size = 32
  c.training.num_steps = 1000
  c.training.learning_rate = 2e-3
  c.training.warmup_steps = 100
  c.training.lr_decay = 'none'     # or 'cosine': to 0 at num_steps
  c.training.grad_clip = 1.0
  c.training.ema_decay = 0.995
  c.training.label_dropout = 0.1   # classifier-free guidance label drop rate
  c.training.nan_policy = 'stop'   # 'stop' or 'skip' (up to max_skipped_steps)
  c.training.max_skipped_steps = 0
  c.training.log_every = 50
  c.training.checkpoint_every = 250
  c.training.keep_checkpoints = 3
  c.training.sample_every = 0     # 0: only at the end
  c.training.num_sample_images = 36   # the grid in <workdir>/samples (0: none)

  c.sampling = ml_collections.ConfigDict()
  c.sampling.sampler = 'ddpm'
  c.sampling.num_steps = 0        # 0: all T steps
  c.sampling.var_type = 'fixedlarge'
  c.sampling.clip_x0 = True
  c.sampling.spacing = 'uniform'
  c.sampling.eta = 0.0            # DDIM only
  c.sampling.guidance_scale = 1.0  # class-conditional models: grid guidance
  return c


def _plain(d: dict) -> dict:
  return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in d.items()}


def model_signature(config) -> dict:
  """The parts of a config that fix the parameter tree and its meaning."""
  sig = {'task': config.get('task', 'diffusion'),
         'image_size': config.data.image_size,
         'channels': config.data.channels}
  if sig['task'] == 'autoencoder':
    sig['autoencoder'] = _plain(config.autoencoder.to_dict())
    sig['autoencoder'].pop('scale_images', None)
    return sig
  sig['model'] = {k: v for k, v in _plain(config.model.to_dict()).items()
                  if k != 'dropout'}
  sig['num_classes'] = config.data.num_classes
  if is_latent(config):
    sig['latent_autoencoder'] = config.latent.fingerprint
  return sig


def is_latent(config) -> bool:
  """A diffusion model in an autoencoder's latent space?"""
  return config.get('task', 'diffusion') == 'diffusion' and bool(
      config.get('latent', {}).get('autoencoder_workdir'))


def is_text(config) -> bool:
  """A diffusion model conditioned on text prompts?"""
  return config.get('task', 'diffusion') == 'diffusion' and bool(
      config.model.get('text_conditional', False))


def null_condition(config, n: int) -> np.ndarray | None:
  """What the unconditional branch of guidance gets for n images: the null
  label, a text model's empty prompt (tokens [n, L]), or None."""
  if is_text(config):
    from ddpm_jax import tokenizer
    return np.repeat(tokenizer.tokenize('', config.model.text_max_len)[None],
                     n, axis=0)
  if config.model.class_conditional:
    return np.full((n,), config.data.num_classes, np.int32)
  return None


def autoencoder_factor(ae_cfg) -> int:
  """f: the autoencoder's downsampling factor."""
  return 2 ** (len(ae_cfg.ch_mult) - 1)


def unet_input_shape(config) -> tuple[int, int, int]:
  """(H, W, C) the UNet denoises: the image's, or for a latent model the
  latent's (of the `autoencoder` section)."""
  d = config.data
  if is_latent(config):
    ae = config.autoencoder
    size = d.image_size // autoencoder_factor(ae)
    return (size, size, int(ae.z_channels))
  return (d.image_size, d.image_size, d.channels)


# Fields a resumed run must share with its checkpoint, besides the model:
# they define the experiment (the noise process, the data, the batches).
# Every other field (num_steps, logging, checkpoint and sample intervals,
# the optimizer's settings, sampling) may change on resume.
RESUME_FIXED = ('seed', 'diffusion.schedule', 'diffusion.num_timesteps',
                'diffusion.beta_start', 'diffusion.beta_end',
                'diffusion.prediction', 'data.name',
                'data.split', 'data.image_size', 'data.resize', 'data.channels',
                'training.batch_size')


def _field(config, dotted: str):
  value = config
  for part in dotted.split('.'):
    value = value.get(part) if hasattr(value, 'get') else None
  return value


def _non_finite(d: dict, prefix: str = '') -> tuple[str, float] | None:
  """(field, value) of the first NaN or infinite number in a config dict."""
  for k, v in d.items():
    if isinstance(v, dict):
      found = _non_finite(v, f'{prefix}{k}.')
      if found:
        return found
    for x in (v if isinstance(v, (list, tuple)) else [v]):
      if isinstance(x, float) and not math.isfinite(x):
        return f'{prefix}{k}', x
  return None


def validate(config, num_devices: int = 1) -> None:
  """Raises ConfigError with one line naming the first problem found."""
  bad = _non_finite(config.to_dict())
  if bad:
    raise ConfigError(f'{bad[0]} is {bad[1]}; every number in a config must '
                      'be finite')
  t, m, d = config.training, config.model, config.data
  if d.resize not in ('bilinear', 'pad'):
    raise ConfigError(f"data.resize must be 'bilinear' or 'pad', got {d.resize!r}")
  if config.task not in ('diffusion', 'autoencoder'):
    raise ConfigError(f"task must be 'diffusion' or 'autoencoder', got {config.task!r}")
  if config.task == 'autoencoder' or is_latent(config):
    _validate_autoencoder(config.autoencoder, d)
  if t.batch_size <= 0:
    raise ConfigError(f'training.batch_size must be positive, got {t.batch_size}')
  if t.batch_size % num_devices:
    raise ConfigError(f'training.batch_size={t.batch_size} does not divide over '
                      f'{num_devices} devices; use a multiple of {num_devices}')
  if t.num_steps <= 0:
    raise ConfigError(f'training.num_steps must be positive, got {t.num_steps}')
  for name in ('checkpoint_every', 'log_every', 'keep_checkpoints'):
    if t[name] <= 0:
      raise ConfigError(f'training.{name} must be positive, got {t[name]}')
  if t.sample_every < 0 or t.num_sample_images < 0:
    raise ConfigError('training.sample_every and training.num_sample_images '
                      'must be >= 0')
  if not 0.0 <= t.ema_decay < 1.0:
    raise ConfigError(f'training.ema_decay must be in [0, 1), got {t.ema_decay}')
  if t.learning_rate <= 0 or t.warmup_steps < 0 or t.grad_clip <= 0:
    raise ConfigError('training.learning_rate and grad_clip must be positive, '
                      'warmup_steps non-negative')
  if t.lr_decay not in ('none', 'cosine'):
    raise ConfigError(f"training.lr_decay must be 'none' or 'cosine', got {t.lr_decay!r}")
  if config.task == 'diffusion':
    _validate_unet(config)
  if config.diffusion.schedule not in BETA_SCHEDULES:
    raise ConfigError(f'diffusion.schedule={config.diffusion.schedule!r} is not '
                      f'one of {sorted(BETA_SCHEDULES)}')
  if config.diffusion.num_timesteps <= 1:
    raise ConfigError('diffusion.num_timesteps must be at least 2')
  if not 0 < config.diffusion.beta_start < config.diffusion.beta_end < 1:
    raise ConfigError('diffusion betas need 0 < beta_start < beta_end < 1')
  if config.diffusion.prediction not in diffusion.PREDICTIONS:
    raise ConfigError(f'diffusion.prediction={config.diffusion.prediction!r} is '
                      f'not one of {list(diffusion.PREDICTIONS)}')
  if config.diffusion.loss_weighting not in diffusion.LOSS_WEIGHTINGS:
    raise ConfigError(f'diffusion.loss_weighting={config.diffusion.loss_weighting!r}'
                      f' is not one of {list(diffusion.LOSS_WEIGHTINGS)}')
  if not config.diffusion.min_snr_gamma > 0:
    raise ConfigError('diffusion.min_snr_gamma must be positive, got '
                      f'{config.diffusion.min_snr_gamma}')
  if d.channels not in (1, 3):
    raise ConfigError(f'data.channels must be 1 or 3, got {d.channels}')
  if m.class_conditional and d.num_classes <= 0:
    raise ConfigError('model.class_conditional needs data.num_classes > 0')
  if config.task == 'diffusion' and m.text_conditional:
    _validate_text(config)
  if t.nan_policy not in ('stop', 'skip') or t.max_skipped_steps < 0:
    raise ConfigError("training.nan_policy must be 'stop' or 'skip' and "
                      'training.max_skipped_steps non-negative')
  if not 0.0 <= t.label_dropout <= 1.0:
    raise ConfigError('training.label_dropout must be in [0, 1]')
  s = config.sampling
  if s.var_type not in ('fixedlarge', 'fixedsmall'):
    raise ConfigError(f"sampling.var_type must be 'fixedlarge' or 'fixedsmall', "
                      f'got {s.var_type!r}')
  if not 0 <= s.num_steps <= config.diffusion.num_timesteps:
    raise ConfigError(f'sampling.num_steps={s.num_steps} must be in '
                      f'[0, {config.diffusion.num_timesteps}] (0 means all)')


def _validate_unet(config) -> None:
  m, d = config.model, config.data
  if not 0.0 <= m.dropout < 1.0:
    raise ConfigError(f'model.dropout must be in [0, 1), got {m.dropout}')
  if m.ch <= 0 or m.num_res_blocks <= 0 or not m.ch_mult:
    raise ConfigError('model.ch, model.num_res_blocks and model.ch_mult must be '
                      'positive and non-empty')
  if m.dtype not in ('float32', 'bfloat16', 'float16'):
    raise ConfigError(f"model.dtype must be 'float32', 'bfloat16' or 'float16', "
                      f'got {m.dtype!r}')
  if m.patch_size < 1:
    raise ConfigError(f'model.patch_size must be >= 1, got {m.patch_size}')
  from ddpm_jax.models.unet import downsample_factor  # flax: load on use
  factor = downsample_factor(m.ch_mult, m.patch_size)
  size = unet_input_shape(config)[0]
  what = (f'the latent size {size} (data.image_size={d.image_size} / '
          f'f={autoencoder_factor(config.autoencoder)})'
          if size != d.image_size else f'data.image_size={d.image_size}')
  if size <= 0 or size % factor:
    patch = f' and patch_size={m.patch_size}' if m.patch_size > 1 else ''
    raise ConfigError(
        f'{what} cannot be halved {len(m.ch_mult) - 1} '
        f'times by a UNet with ch_mult={tuple(m.ch_mult)}{patch}; use a '
        f'multiple of {factor}')
  levels = [size // m.patch_size // 2 ** k for k in range(len(m.ch_mult))]
  if set(m.attn_resolutions) - set(levels):
    raise ConfigError(f'model.attn_resolutions={tuple(m.attn_resolutions)} names '
                      f'a resolution the UNet does not have; its levels are '
                      f'{tuple(levels)}')
  for c in {m.ch * k for k in m.ch_mult} | {m.ch}:
    if c % m.num_groups:
      raise ConfigError(f'model.num_groups={m.num_groups} does not divide the '
                        f'channel count {c}')


def _validate_text(config) -> None:
  from ddpm_jax import captions
  m, d = config.model, config.data
  if m.class_conditional:
    raise ConfigError('model.text_conditional and model.class_conditional '
                      'exclude each other: the prompt names the class')
  if d.captions not in captions.CAPTION_SETS:
    raise ConfigError(f'data.captions={d.captions!r} is not one of '
                      f'{list(captions.CAPTION_SETS)}')
  if d.num_classes != captions.num_classes(d.captions):
    raise ConfigError(f'data.captions={d.captions!r} has '
                      f'{captions.num_classes(d.captions)} classes, the data '
                      f'{d.num_classes}')
  if min(m.text_dim, m.text_layers, m.text_heads) <= 0 or m.text_max_len < 3:
    raise ConfigError('model.text_dim, text_layers and text_heads must be '
                      'positive and text_max_len at least 3')
  if m.text_conv < 0:
    raise ConfigError(f'model.text_conv must be >= 0, got {m.text_conv}')
  from ddpm_jax.models.text import POOLS  # flax: load on use
  if m.text_pool not in POOLS:
    raise ConfigError(f'model.text_pool must be one of {POOLS}, got '
                      f'{m.text_pool!r}')
  if not m.cross_attn_resolutions:
    raise ConfigError('a text model needs model.cross_attn_resolutions: the '
                      'resolutions where the UNet reads the prompt')
  size = unet_input_shape(config)[0] // m.patch_size
  levels = [size // 2 ** k for k in range(len(m.ch_mult))]
  if set(m.cross_attn_resolutions) - set(levels):
    raise ConfigError(f'model.cross_attn_resolutions='
                      f'{tuple(m.cross_attn_resolutions)} names a resolution '
                      f'the UNet does not have; its levels are {tuple(levels)}')
  for k, res in enumerate(levels):
    c = m.ch * m.ch_mult[k]
    if res in m.cross_attn_resolutions and c % m.text_heads:
      raise ConfigError(f'model.text_heads={m.text_heads} does not divide the '
                        f'channel count {c} at resolution {res}')
  if m.text_dim % m.text_heads:
    raise ConfigError(f'model.text_heads={m.text_heads} does not divide '
                      f'model.text_dim={m.text_dim}')


def _validate_autoencoder(a, d) -> None:
  if a.ch <= 0 or a.num_res_blocks <= 0 or not a.ch_mult or a.z_channels <= 0:
    raise ConfigError('autoencoder.ch, num_res_blocks, z_channels and ch_mult '
                      'must be positive and non-empty')
  f = autoencoder_factor(a)
  if d.image_size % f:
    raise ConfigError(f'data.image_size={d.image_size} cannot be divided by the '
                      f'autoencoder\'s f={f}; use a multiple of {f}')
  for c in {a.ch * k for k in a.ch_mult}:
    if c % a.num_groups:
      raise ConfigError(f'autoencoder.num_groups={a.num_groups} does not divide '
                        f'the channel count {c}')
  if a.loss not in ('l1', 'l2'):
    raise ConfigError(f"autoencoder.loss must be 'l1' or 'l2', got {a.loss!r}")
  if a.kl_weight < 0 or a.scale_images <= 0:
    raise ConfigError('autoencoder.kl_weight must be >= 0 and scale_images > 0')
  if a.dtype not in ('float32', 'bfloat16', 'float16'):
    raise ConfigError(f'autoencoder.dtype {a.dtype!r} is not a float type')


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  """A config saved as JSON (in a checkpoint) as a ConfigDict again. Fields
  added to the base config since it was saved get their defaults, which are
  what the older code did (e.g. diffusion.prediction = 'eps')."""
  def merge(base: dict, saved: dict) -> dict:
    out = dict(base)
    for k, v in saved.items():
      out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(
          base.get(k), dict) else v
    return out
  return ml_collections.ConfigDict(merge(base_config().to_dict(), d))


def check_compatible(config, saved, directory: str) -> None:
  """Raises one line if the checkpoint's model or experiment (RESUME_FIXED)
  differs from the config's."""
  a, b = model_signature(saved), model_signature(config)
  if a != b:
    diffs = _diff(a, b)
    raise UserError(
        f'the checkpoint in {directory} was made with another model config '
        f'({"; ".join(diffs[:3])}); use a new --workdir or the same config')
  cosine = config.diffusion.schedule == 'cosine' == saved.diffusion.schedule
  for name in RESUME_FIXED:
    if cosine and name.startswith('diffusion.beta_'):
      continue  # the cosine schedule does not use them
    old, new = _field(saved, name), _field(config, name)
    if old != new and not (isinstance(old, (list, tuple)) and list(old) == list(new)):
      raise UserError(
          f'cannot resume in {directory}: {name} is {old!r} in the checkpoint '
          f'but {new!r} now; use a new --workdir, or the same {name}')


def _diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f'{prefix}{k}.')
    return out
  return [] if a == b else [f'{prefix[:-1]}: checkpoint {a} vs config {b}']


def betas_from_config(config) -> np.ndarray:
  d = config.diffusion
  if d.schedule == 'cosine':  # defined by ᾱ alone; beta_start/end do not apply
    return get_betas(d.schedule, d.num_timesteps)
  return get_betas(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)


def schedule_from_config(config) -> Schedule:
  return make_schedule(betas_from_config(config))


def eps_apply_from_config(config, apply, schedule: Schedule | None = None):
  """The network's apply as an ε-predictor, for samplers and bits/dim
  (`schedule`: the config's, if the caller has built it already)."""
  if schedule is None:
    schedule = schedule_from_config(config)
  return diffusion.eps_apply(apply, schedule, config.diffusion.prediction)


def loss_from_config(config, schedule: Schedule | None = None):
  """loss(out_fn, x0, key) for the config's prediction target and weighting."""
  if schedule is None:
    schedule = schedule_from_config(config)
  d = config.diffusion
  return diffusion.make_loss(schedule, d.prediction, d.loss_weighting,
                             d.min_snr_gamma)


def model_from_config(config):
  """The model `config` trains, with fresh parameters (seeded by
  config.seed): the UNet (over pixels or latents), or the autoencoder."""
  d = config.data
  if config.get('task', 'diffusion') == 'autoencoder':
    from ddpm_jax.models.autoencoder import build_autoencoder
    return build_autoencoder(config.autoencoder, d.channels, seed=config.seed)
  from ddpm_jax.models.unet import build_unet
  size, _, channels = unet_input_shape(config)
  return build_unet(config.model, size, channels, d.num_classes,
                    seed=config.seed)


_SAMPLER_OPTION_VALUES = {
    'spacing': ('uniform', 'leading', 'trailing', 'karras'),
    'var_type': ('fixedlarge', 'fixedsmall'),
}


def sampler_from_config(config, name: str | None = None,
                        num_steps: int | None = None, **options
                        ) -> samplers_lib.Sampler:
  """The sampler named (default: config.sampling.sampler) with the config's
  step count, variance, clipping and spacing unless given. Every check on a
  sampler request (name, step range, option names and values) lives here."""
  s = config.sampling
  name = name or s.sampler
  if name not in samplers_lib.SAMPLERS:
    raise UserError(f'unknown sampler {name!r}; choose one of '
                    f'{sorted(samplers_lib.SAMPLERS)}')
  T = config.diffusion.num_timesteps
  if num_steps is None:
    num_steps = s.num_steps or T   # the config's 0 means all T steps
  if not 1 <= num_steps <= T:
    raise UserError(f'number of steps must be in [1, {T}], got {num_steps}')
  accepted = {p.name for p in inspect.signature(
      samplers_lib.SAMPLERS[name]).parameters.values()
      if p.kind == inspect.Parameter.KEYWORD_ONLY}
  for key in options:
    if key not in accepted:
      raise UserError(f'the {name} sampler has no option {key!r}; it takes '
                      f'{sorted(accepted)}')
  defaults = {'var_type': s.var_type, 'clip_x0': s.clip_x0, 'spacing': s.spacing}
  options = {**{k: v for k, v in defaults.items() if k in accepted}, **options}
  for key, allowed in _SAMPLER_OPTION_VALUES.items():
    if key in options and options[key] not in allowed:
      raise UserError(f'{key} must be one of {list(allowed)}, got {options[key]!r}')
  if options.get('spacing') == 'karras' and name in ('ddpm', 'ddim'):
    raise UserError(f"spacing 'karras' is a σ grid: use it with one of "
                    f"{sorted(samplers_lib.SIGMA_SAMPLERS)}, not {name}")
  if 'eta' in options and not (math.isfinite(options['eta']) and options['eta'] >= 0):
    raise UserError(f'eta must be a finite number >= 0, got {options["eta"]}')
  return samplers_lib.make_sampler(name, betas_from_config(config), num_steps,
                                   **options)
