"""The config schema (`base_config`, which every file in configs/ overrides),
its validation, what a resumed run must keep, and `model_kind`: the one
description of what a config trains. What turns a config into models and
functions lives in builders.py."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from ddpm_jax import options
from ddpm_jax.errors import UserError


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
  c.data.name = 'mnist5k'       # 'mnist5k' (embedded), 'folder' or a TFDS name
  c.data.folder = ''            # data.name='folder': your images (image_folder.py)
  c.data.crop = 'center'        # a folder's or mixed-size TFDS images: after the
                                # shorter side is resized (options.CROPS)
  c.data.workers = 0            # decoding processes of the input pipeline (grain)
  c.data.class_names = ()       # a folder's classes (filled in, not for users)
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.split = 'train'
  c.data.image_size = 28        # images are brought to this size if it differs:
  c.data.resize = 'bilinear'    # resized, or 'pad': centred on black (-1)
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False
  c.data.captions = 'digits'    # text models: 'digits' or 'fashion' (captions.py),
                                # or 'folder': a folder's own captions

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
  # What diffusers' UNet2DModel may differ in (imported models set them):
  c.model.norm_eps = 1e-6         # every GroupNorm's epsilon
  c.model.attn_head_dim = 0       # self-attention heads of this width (0: one head)
  c.model.downsample_padding = 0  # 0: pad after (the paper's); 1: on every side
  c.model.freq_shift = 1.0        # timestep frequencies 1e4^(-k/(half - shift))
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
                                   # embedding (options.TEXT_POOLS; '': none)

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
  c.diffusion.trained_betas = ()  # schedule 'trained': one beta per step
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4   # linear and sigmoid only: the cosine
  c.diffusion.beta_end = 0.02     # schedule is defined by its ᾱ alone
  c.diffusion.prediction = 'eps'  # what the UNet predicts (options.PREDICTIONS)
  c.diffusion.loss_weighting = 'none'  # or 'min_snr' (Hang et al., 2023)
  c.diffusion.min_snr_gamma = 5.0

  c.training = ml_collections.ConfigDict()
  c.training.batch_size = 32       # images per update (over all devices)
  c.training.grad_accum_steps = 1  # k: the batch runs as k micro-batches
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
  # Inpainting and outpainting, for what a request leaves unset ('' and 0:
  # the plain sampler and step count above); chosen from the editing
  # benchmark (docs/results/editing.md).
  c.sampling.edit_sampler = 'euler_a'
  c.sampling.edit_num_steps = 20
  c.sampling.edit_jumps = 3
  # An edit of a pixel model without a label: reconstruction guidance of
  # this weight instead of the jumps (0: off; sampling.reconstruction_eps_fn).
  c.sampling.edit_reconstruction = 20.0
  # An edit of a class-conditional pixel model without a label: complete
  # once unconditionally, let the model classify the known pixels
  # (Pipeline.infer_labels), complete again the same way with those labels
  # (guidance scale 1, the reconstruction guidance above).
  c.sampling.edit_infer_label = True
  return c


def _plain(d: dict) -> dict:
  return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in d.items()}


def model_signature(config) -> dict:
  """The parts of a config that fix the parameter tree and its meaning."""
  kind = model_kind(config)
  sig = {'task': kind.task,
         'image_size': config.data.image_size,
         'channels': config.data.channels}
  if kind.autoencoder:
    sig['autoencoder'] = _plain(config.autoencoder.to_dict())
    sig['autoencoder'].pop('scale_images', None)
    return sig
  sig['model'] = {k: v for k, v in _plain(config.model.to_dict()).items()
                  if k != 'dropout'}
  sig['num_classes'] = config.data.num_classes
  if kind.latent:
    sig['latent_autoencoder'] = config.latent.fingerprint
  return sig


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """What a config trains: the UNet over pixels or over an autoencoder's
  latents, conditioned on classes, text or nothing; or the autoencoder."""
  task: str        # options.TASKS
  space: str       # 'pixel' or 'latent' (an autoencoder: 'pixel')
  condition: str   # 'class', 'text' or 'none' (an autoencoder: 'none')

  @property
  def autoencoder(self) -> bool:
    return self.task == 'autoencoder'

  @property
  def latent(self) -> bool:
    return self.space == 'latent'

  @property
  def text(self) -> bool:
    return self.condition == 'text'

  @property
  def classes(self) -> bool:
    return self.condition == 'class'

  @property
  def conditional(self) -> bool:
    return self.condition != 'none'


def model_kind(config) -> ModelKind:
  """The ModelKind of a config; every caller asks this, nothing re-derives it."""
  if config.get('task', 'diffusion') == 'autoencoder':
    return ModelKind('autoencoder', 'pixel', 'none')
  if config.get('stable_diffusion'):   # an imported Stable Diffusion pipeline
    return ModelKind('diffusion', 'latent', 'text')
  space = 'latent' if config.get('latent', {}).get('autoencoder_workdir') else 'pixel'
  m = config.model
  condition = ('text' if m.get('text_conditional', False) else
               'class' if m.get('class_conditional', False) else 'none')
  return ModelKind('diffusion', space, condition)


def autoencoder_factor(ae_cfg) -> int:
  """f: the autoencoder's downsampling factor."""
  return 2 ** (len(ae_cfg.ch_mult) - 1)


def unet_input_shape(config) -> tuple[int, int, int]:
  """(H, W, C) the UNet denoises: the image's, or for a latent model the
  latent's (of the `autoencoder` section)."""
  d = config.data
  if model_kind(config).latent:
    ae = config.autoencoder
    size = d.image_size // autoencoder_factor(ae)
    return (size, size, int(ae.z_channels))
  return (d.image_size, d.image_size, d.channels)


# Fields a resumed run must share with its checkpoint, besides the model:
# they define the experiment (the noise process, the data, the batches).
# Every other field (num_steps, logging, checkpoint and sample intervals,
# the optimizer's settings, sampling) may change on resume.
RESUME_FIXED = ('seed', 'diffusion.schedule', 'diffusion.trained_betas',
                'diffusion.num_timesteps',
                'diffusion.beta_start', 'diffusion.beta_end',
                'diffusion.prediction', 'data.name', 'data.folder',
                'data.split', 'data.image_size', 'data.resize', 'data.channels',
                'training.batch_size', 'training.grad_accum_steps')


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


def _choice(field: str, value: Any, allowed: tuple) -> None:
  if value not in allowed:
    raise ConfigError(f'{field}={value!r} is not one of {list(allowed)}')


def validate(config, num_devices: int = 1) -> None:
  """Raises ConfigError with one line naming the first problem found."""
  bad = _non_finite(config.to_dict())
  if bad:
    raise ConfigError(f'{bad[0]} is {bad[1]}; every number in a config must '
                      'be finite')
  t, m, d = config.training, config.model, config.data
  if not isinstance(config.seed, int) or config.seed < 0:
    raise ConfigError(f'seed must be an integer >= 0, got {config.seed}')
  _choice('data.resize', d.resize, options.RESIZE_MODES)
  _choice('data.crop', d.crop, options.CROPS)
  if d.name == options.EMBEDDED_DATASET:
    _choice('data.split', d.split, options.EMBEDDED_SPLITS)
  if d.workers < 0:
    raise ConfigError(f'data.workers must be >= 0, got {d.workers}')
  _choice('task', config.task, options.TASKS)
  kind = model_kind(config)
  if kind.autoencoder or kind.latent:
    _validate_autoencoder(config.autoencoder, d)
  if t.batch_size <= 0:
    raise ConfigError(f'training.batch_size must be positive, got {t.batch_size}')
  if t.batch_size % num_devices:
    raise ConfigError(f'training.batch_size={t.batch_size} does not divide over '
                      f'{num_devices} devices; use a multiple of {num_devices}')
  k = t.grad_accum_steps
  if not isinstance(k, int) or k <= 0:
    raise ConfigError(f'training.grad_accum_steps must be a positive integer, '
                      f'got {k!r}')
  if t.batch_size % (k * num_devices):
    raise ConfigError(f'training.batch_size={t.batch_size} does not split into '
                      f'training.grad_accum_steps={k} micro-batches over '
                      f'{num_devices} devices; use a multiple of {k * num_devices}')
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
  _choice('training.lr_decay', t.lr_decay, options.LR_DECAYS)
  if not kind.autoencoder:
    _validate_unet(config)
  _choice('diffusion.schedule', config.diffusion.schedule, options.SCHEDULES)
  if config.diffusion.schedule == 'trained':
    b = config.diffusion.get('trained_betas', ())
    if len(b) != config.diffusion.num_timesteps or not all(0 < x < 1 for x in b):
      raise ConfigError(f'diffusion.trained_betas must hold diffusion.num_timesteps='
                        f'{config.diffusion.num_timesteps} numbers in (0, 1), got {len(b)}')
  if config.diffusion.num_timesteps <= 1:
    raise ConfigError('diffusion.num_timesteps must be at least 2')
  if not 0 < config.diffusion.beta_start < config.diffusion.beta_end < 1:
    raise ConfigError('diffusion betas need 0 < beta_start < beta_end < 1')
  _choice('diffusion.prediction', config.diffusion.prediction, options.PREDICTIONS)
  _choice('diffusion.loss_weighting', config.diffusion.loss_weighting,
          options.LOSS_WEIGHTINGS)
  if not config.diffusion.min_snr_gamma > 0:
    raise ConfigError('diffusion.min_snr_gamma must be positive, got '
                      f'{config.diffusion.min_snr_gamma}')
  _choice('data.channels', d.channels, options.CHANNELS)
  if m.class_conditional and d.num_classes <= 0:
    raise ConfigError('model.class_conditional needs data.num_classes > 0')
  if kind.text:
    _validate_text(config)
  _choice('training.nan_policy', t.nan_policy, options.NAN_POLICIES)
  if t.max_skipped_steps < 0:
    raise ConfigError('training.max_skipped_steps must be >= 0, got '
                      f'{t.max_skipped_steps}')
  if not 0.0 <= t.label_dropout <= 1.0:
    raise ConfigError('training.label_dropout must be in [0, 1]')
  s = config.sampling
  _choice('sampling.var_type', s.var_type, options.VAR_TYPES)
  _choice('sampling.sampler', s.sampler, options.SAMPLERS)
  if s.edit_sampler:
    _choice('sampling.edit_sampler', s.edit_sampler, options.SAMPLERS)
  if s.edit_jumps < 0 or s.edit_num_steps < 0:
    raise ConfigError('sampling.edit_jumps and sampling.edit_num_steps must be '
                      '>= 0')
  if not 0.0 <= s.edit_reconstruction < float('inf'):
    raise ConfigError('sampling.edit_reconstruction must be a finite number >= 0')
  if not isinstance(s.edit_infer_label, bool):
    raise ConfigError('sampling.edit_infer_label must be True or False')
  _choice('sampling.spacing', s.spacing, options.SPACINGS)
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
  _choice('model.dtype', m.dtype, options.DTYPES)
  if m.patch_size < 1:
    raise ConfigError(f'model.patch_size must be >= 1, got {m.patch_size}')
  if m.downsample_padding not in (0, 1):
    raise ConfigError(f'model.downsample_padding must be 0 or 1, got '
                      f'{m.downsample_padding}')
  if not m.norm_eps > 0:
    raise ConfigError(f'model.norm_eps must be positive, got {m.norm_eps}')
  if m.attn_head_dim < 0 or (m.attn_head_dim and any(
      (m.ch * k) % m.attn_head_dim for k in m.ch_mult)):
    raise ConfigError(f'model.attn_head_dim={m.attn_head_dim} must divide the '
                      f'channels of every level ({[m.ch * k for k in m.ch_mult]})')
  if m.freq_shift >= m.ch // 2:
    raise ConfigError(f'model.freq_shift must be below half of model.ch, got '
                      f'{m.freq_shift}')
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
  if (d.captions == 'folder') != (d.name == 'folder'):
    raise ConfigError("a text model of a folder takes the folder's own "
                      "captions: data.captions='folder' goes with "
                      "data.name='folder'")
  if d.captions != 'folder':
    _choice('data.captions', d.captions, captions.CAPTION_SETS)
  if d.captions != 'folder' and d.num_classes != captions.num_classes(d.captions):
    raise ConfigError(f'data.captions={d.captions!r} has '
                      f'{captions.num_classes(d.captions)} classes, the data '
                      f'{d.num_classes}')
  if min(m.text_dim, m.text_layers, m.text_heads) <= 0 or m.text_max_len < 3:
    raise ConfigError('model.text_dim, text_layers and text_heads must be '
                      'positive and text_max_len at least 3')
  if m.text_conv < 0:
    raise ConfigError(f'model.text_conv must be >= 0, got {m.text_conv}')
  _choice('model.text_pool', m.text_pool, options.TEXT_POOLS)
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
  _choice('autoencoder.loss', a.loss, options.AUTOENCODER_LOSSES)
  if a.kl_weight < 0 or a.scale_images <= 0:
    raise ConfigError('autoencoder.kl_weight must be >= 0 and scale_images > 0')
  _choice('autoencoder.dtype', a.dtype, options.DTYPES)


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
        f'({"; ".join(diffs[:3])}); use a new workdir or the same config')
  cosine = config.diffusion.schedule == 'cosine' == saved.diffusion.schedule
  for name in RESUME_FIXED:
    if cosine and name.startswith('diffusion.beta_'):
      continue  # the cosine schedule does not use them
    old, new = _field(saved, name), _field(config, name)
    if old != new and not (isinstance(old, (list, tuple)) and list(old) == list(new)):
      raise UserError(
          f'cannot resume in {directory}: {name} is {old!r} in the checkpoint '
          f'but {new!r} now; use a new workdir, or the same {name}')


def _diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f'{prefix}{k}.')
    return out
  return [] if a == b else [f'{prefix[:-1]}: checkpoint {a} vs config {b}']


