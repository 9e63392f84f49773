"""diffusers' UNet2DModel checkpoints in and out: the paper's published
weights (google/ddpm-cifar10-32, ...) and fine-tuned DDPMs as ordinary
workdirs, and our models as diffusers folders.

A diffusers folder is `config.json` + `diffusion_pytorch_model.safetensors`
(or `.bin`) for the UNet, optionally `scheduler_config.json` beside it, or a
pipeline folder (`model_index.json`, `unet/`, `scheduler/`). Every field of
UNet2DModel's config either maps onto our UNet exactly or is refused with
one line naming it; nothing is silently approximated.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import builders
from ddpm_jax import files
from ddpm_jax import options
from ddpm_jax import sampling
from ddpm_jax import config as config_lib
from ddpm_jax.checkpoint import Checkpointer
from ddpm_jax.errors import UserError, describe

WEIGHTS = 'diffusion_pytorch_model.safetensors'
LEGACY_WEIGHTS = 'diffusion_pytorch_model.bin'
# Our class embedding has one more row than diffusers' (the null label of
# classifier-free guidance); an export records it here so an import restores it.
NULL_CLASS_KEY = 'ddpm_jax_null_class'

_BLOCKS_DOWN = ('DownBlock2D', 'AttnDownBlock2D')
_BLOCKS_UP = ('UpBlock2D', 'AttnUpBlock2D')
_SCHEDULES = {'linear': 'linear', 'scaled_linear': 'scaled_linear',
              'squaredcos_cap_v2': 'cosine', 'sigmoid': 'sigmoid'}
_PREDICTIONS = {'epsilon': 'eps', 'v_prediction': 'v', 'sample': 'x0'}
_VARIANCES = {'fixed_large': 'fixedlarge', 'fixed_small': 'fixedsmall'}
# diffusers' timestep_spacing names, in the order of ours (options.TIMESTEP_SPACINGS)
_SPACINGS = dict(zip(('linspace', 'leading', 'trailing'), options.TIMESTEP_SPACINGS))


def _inverse(d: dict) -> dict:
  """ours -> diffusers' name."""
  return {v: k for k, v in d.items()}


_SCHEDULE_NAMES = _inverse(_SCHEDULES)
_OLD_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v',
                        'proj_attn': 'to_out.0'}


def find_folders(src: str) -> tuple[str, str | None]:
  """(the UNet's folder, the scheduler's folder or None) of `src`."""
  if not os.path.isdir(src):
    raise UserError(f'{src} is not a folder' if os.path.exists(src)
                    else f'{src} does not exist')
  if os.path.isfile(os.path.join(src, 'model_index.json')):
    unet, sched = os.path.join(src, 'unet'), os.path.join(src, 'scheduler')
    if not os.path.isfile(os.path.join(unet, 'config.json')):
      raise UserError(f'{src} is a pipeline folder without unet/config.json')
    return unet, sched if os.path.isfile(os.path.join(sched, 'scheduler_config.json')) else None
  if not os.path.isfile(os.path.join(src, 'config.json')):
    raise UserError(f'{src} holds neither config.json (a UNet2DModel) nor '
                    'model_index.json (a pipeline)')
  return src, src if os.path.isfile(os.path.join(src, 'scheduler_config.json')) else None


def read_json(path: str) -> dict:
  """A diffusers config file as a dict; anything else is one UserError."""
  try:
    with open(path, encoding='utf-8') as f:
      d = json.load(f)
  except FileNotFoundError:
    raise UserError(f'{path} does not exist') from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f'cannot read {path}: {describe(e)}') from e
  if not isinstance(d, dict):
    raise UserError(f'{path} is not a JSON object')
  return d


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The float32 tensors of a .safetensors file (no torch needed)."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    tensors = load_file(path)
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise UserError(f'cannot read {path}: {describe(e)}') from e
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def read_weights(folder: str) -> dict[str, np.ndarray]:
  """The UNet's tensors as float32 NumPy arrays, from safetensors (no torch
  needed), or from a legacy .bin through torch.load(weights_only=True)."""
  path = os.path.join(folder, WEIGHTS)
  if os.path.isfile(path):
    tensors = read_safetensors(path)
  elif os.path.isfile(os.path.join(folder, LEGACY_WEIGHTS)):
    legacy = os.path.join(folder, LEGACY_WEIGHTS)
    try:
      import torch
    except ImportError:
      raise UserError(
          f'{folder} has only {LEGACY_WEIGHTS}, a PyTorch pickle: install torch '
          '(pip install torch) to read it safely, or convert it to '
          f'{WEIGHTS} with diffusers (UNet2DModel.from_pretrained(...).'
          'save_pretrained(..., safe_serialization=True))') from None
    try:
      state = torch.load(legacy, map_location='cpu', weights_only=True)
    except (RuntimeError, OSError, EOFError) as e:
      raise UserError(f'cannot read {legacy}: {describe(e)}') from e
    tensors = {k: v.float().numpy() for k, v in state.items()}
  else:
    raise UserError(f'{folder} has no {WEIGHTS} (or {LEGACY_WEIGHTS})')
  out = {}
  for k, v in tensors.items():
    parts = k.split('.')
    if len(parts) >= 2 and parts[-2] in _OLD_ATTENTION_NAMES:  # converted DDPM names
      k = '.'.join(parts[:-2] + [_OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
    out[k] = np.asarray(v, np.float32)
  return out


def _refuse(field: str, value: Any, why: str = '') -> UserError:
  return UserError(f'config.json: {field}={json.dumps(value)} cannot be '
                   f'represented by this UNet{": " + why if why else ""}')


def config_from_diffusers(unet: dict, scheduler: dict | None,
                          base: ml_collections.ConfigDict | None = None
                          ) -> tuple[ml_collections.ConfigDict, bool]:
  """(our config, whether sin and cos are flipped) of a UNet2DModel config
  and a DDPMScheduler config; any field our UNet cannot represent exactly
  is one UserError naming it."""
  if unet.get('_class_name', 'UNet2DModel') != 'UNet2DModel':
    raise UserError(f'config.json describes a {unet["_class_name"]}, not a '
                    'UNet2DModel')
  get = lambda k, default=None: unet.get(k, default)
  fixed = {'act_fn': ('silu', 'swish'), 'time_embedding_type': ('positional',),
           'resnet_time_scale_shift': ('default',), 'mid_block_scale_factor': (1, 1.0),
           'add_attention': (True,), 'mid_block_type': ('UNetMidBlock2D',),
           'downsample_type': ('conv',), 'upsample_type': ('conv',),
           'center_input_sample': (False,), 'class_embed_type': (None,)}
  defaults = {'act_fn': 'silu', 'time_embedding_type': 'positional',
              'resnet_time_scale_shift': 'default', 'mid_block_scale_factor': 1,
              'add_attention': True, 'mid_block_type': 'UNetMidBlock2D',
              'downsample_type': 'conv', 'upsample_type': 'conv',
              'center_input_sample': False, 'class_embed_type': None}
  for k, allowed in fixed.items():
    if get(k, defaults[k]) not in allowed:
      raise _refuse(k, get(k))
  boc = list(get('block_out_channels', (224, 448, 672, 896)))
  if any(c % boc[0] for c in boc):
    raise _refuse('block_out_channels', boc, 'every width must be a multiple '
                  'of the first')
  ch, n = boc[0], len(boc)
  down = list(get('down_block_types', ()))
  up = list(get('up_block_types', ()))
  for field, types, allowed in (('down_block_types', down, _BLOCKS_DOWN),
                                ('up_block_types', up, _BLOCKS_UP)):
    if len(types) != n or any(t not in allowed for t in types):
      raise _refuse(field, types, f'it takes {n} of {list(allowed)}')
  attn_levels = [l for l in range(n) if down[l] == 'AttnDownBlock2D']
  if [l for l in range(n) if up[n - 1 - l] == 'AttnUpBlock2D'] != attn_levels:
    raise _refuse('up_block_types', up, 'attention must sit at the same levels '
                  'as in down_block_types')
  groups = get('norm_num_groups', 32)
  if get('attn_norm_num_groups') not in (None, groups):
    raise _refuse('attn_norm_num_groups', get('attn_norm_num_groups'))
  temb_dim = get('time_embedding_dim')
  if temb_dim not in (None, 4 * ch):
    raise _refuse('time_embedding_dim', temb_dim, f'it is 4 x {ch} here')
  in_ch, out_ch = get('in_channels', 3), get('out_channels', 3)
  if out_ch != in_ch:
    raise _refuse('out_channels', out_ch, f'it must equal in_channels={in_ch}')
  head_dim = get('attention_head_dim', 8)   # diffusers' default when absent
  head_dim = 0 if head_dim is None else head_dim
  if head_dim and any(boc[l] % head_dim for l in attn_levels + [n - 1]):
    raise _refuse('attention_head_dim', head_dim, 'it must divide the widths '
                  'of the attention levels')
  size = get('sample_size', 32)
  if isinstance(size, (list, tuple)):
    if len(set(size)) != 1:
      raise _refuse('sample_size', size, 'square images only')
    size = size[0]
  c = ml_collections.ConfigDict(
      (base or config_lib.base_config()).to_dict())
  c.data.image_size, c.data.channels = int(size), int(in_ch)
  m = c.model
  m.ch, m.ch_mult = ch, tuple(b // ch for b in boc)
  m.num_res_blocks = get('layers_per_block', 2)
  m.attn_resolutions = tuple(size // 2 ** l for l in attn_levels)
  m.num_groups, m.norm_eps = groups, float(get('norm_eps', 1e-5))
  m.attn_head_dim, m.downsample_padding = int(head_dim), int(get('downsample_padding', 1))
  m.freq_shift, m.dropout = float(get('freq_shift', 0)), float(get('dropout', 0.0))
  m.patch_size, m.text_conditional = 1, False
  classes = get('num_class_embeds')
  m.class_conditional = bool(classes)
  if classes:
    c.data.num_classes = int(unet.get(NULL_CLASS_KEY, classes))
  if scheduler is not None:
    _apply_scheduler(c, scheduler)
  config_lib.validate(c)
  return c, bool(get('flip_sin_to_cos', True))


def _apply_scheduler(c, s: dict) -> None:
  def refuse(field, why=''):
    return UserError(f'scheduler_config.json: {field}={json.dumps(s.get(field))} '
                     f'is not supported{": " + why if why else ""}')
  for field in ('thresholding', 'rescale_betas_zero_snr'):
    if s.get(field):
      raise refuse(field)
  d = c.diffusion
  d.num_timesteps = int(s.get('num_train_timesteps', 1000))
  if s.get('trained_betas') is not None:   # they take precedence, as in diffusers
    d.schedule, d.trained_betas = 'trained', tuple(float(b) for b in s['trained_betas'])
    if len(d.trained_betas) != d.num_timesteps:
      raise refuse('trained_betas', f'it needs num_train_timesteps={d.num_timesteps} values')
  else:
    schedule = s.get('beta_schedule', 'linear')
    if schedule not in _SCHEDULES:
      raise refuse('beta_schedule', f'one of {list(_SCHEDULES)}')
    d.schedule = _SCHEDULES[schedule]
  d.beta_start = float(s.get('beta_start', 1e-4))
  d.beta_end = float(s.get('beta_end', 0.02))
  prediction = s.get('prediction_type', 'epsilon')
  if prediction not in _PREDICTIONS:
    raise refuse('prediction_type', f'one of {list(_PREDICTIONS)}')
  d.prediction = _PREDICTIONS[prediction]
  variance = s.get('variance_type', 'fixed_small')
  if variance not in _VARIANCES:
    raise refuse('variance_type', f'one of {list(_VARIANCES)}')
  c.sampling.var_type = _VARIANCES[variance]
  clip = bool(s.get('clip_sample', True))
  if clip and float(s.get('clip_sample_range', 1.0)) != 1.0:
    raise refuse('clip_sample_range', 'x0 is clipped to [-1, 1]')
  c.sampling.clip_x0 = clip
  spacing = s.get('timestep_spacing', 'leading')
  if spacing not in _SPACINGS:
    raise refuse('timestep_spacing', f'one of {list(_SPACINGS)}')
  c.sampling.spacing = _SPACINGS[spacing]
  if int(s.get('steps_offset', 0)) != 0:
    raise refuse('steps_offset', 'only 0')


def _torch_conv(w):   # [O, I, kh, kw] -> [kh, kw, I, O]
  return np.transpose(w, (2, 3, 1, 0))


def _pairs(config) -> list[tuple[str, str, str]]:
  """(our path, diffusers prefix, kind) for every module; kind: conv,
  linear, norm, skip (a 1x1 conv as our Linear), attn, embed."""
  m = config.model
  n, L = len(m.ch_mult), m.num_res_blocks
  from ddpm_jax.models.unet import attention_levels
  attn = set(attention_levels(config.data.image_size, m.ch_mult, m.attn_resolutions))
  widths = [m.ch * k for k in m.ch_mult]
  out = [('conv_in', 'conv_in', 'conv'), ('temb1', 'time_embedding.linear_1', 'linear'),
         ('temb2', 'time_embedding.linear_2', 'linear'),
         ('norm_out', 'conv_norm_out', 'norm'), ('conv_out', 'conv_out', 'conv')]

  def resnet(ours, theirs, has_skip):
    r = [(f'{ours}/norm1', f'{theirs}.norm1', 'norm'), (f'{ours}/conv1', f'{theirs}.conv1', 'conv'),
         (f'{ours}/temb_proj', f'{theirs}.time_emb_proj', 'linear'),
         (f'{ours}/norm2', f'{theirs}.norm2', 'norm'), (f'{ours}/conv2', f'{theirs}.conv2', 'conv')]
    if has_skip:
      r.append((f'{ours}/skip', f'{theirs}.conv_shortcut', 'skip'))
    return r

  cur, chans = m.ch, [m.ch]
  for l in range(n):
    for j in range(L):
      i = l * (L + 1) + j
      out += resnet(f'down/{i}/0', f'down_blocks.{l}.resnets.{j}', cur != widths[l])
      cur = widths[l]
      chans.append(cur)
      if l in attn:
        out.append((f'down/{i}/1', f'down_blocks.{l}.attentions.{j}', 'attn'))
    if l != n - 1:
      out.append((f'down/{l * (L + 1) + L}/0/conv', f'down_blocks.{l}.downsamplers.0.conv', 'conv'))
      chans.append(cur)
  out += resnet('mid1', 'mid_block.resnets.0', False)
  out.append(('mid_attn', 'mid_block.attentions.0', 'attn'))
  out += resnet('mid2', 'mid_block.resnets.1', False)
  for u in range(n):
    l = n - 1 - u
    for j in range(L + 1):
      i = u * (L + 2) + j
      cin = cur + chans.pop()
      out += resnet(f'up/{i}/0', f'up_blocks.{u}.resnets.{j}', cin != widths[l])
      cur = widths[l]
      if l in attn:
        out.append((f'up/{i}/1', f'up_blocks.{u}.attentions.{j}', 'attn'))
    if l != 0:
      out.append((f'up/{u * (L + 2) + L + 1}/0/conv', f'up_blocks.{u}.upsamplers.0.conv', 'conv'))
  if m.class_conditional:
    out.append(('class_emb', 'class_embedding', 'embed'))
  return out


def _set(tree: dict, path: str, value) -> None:
  keys = [int(k) if k.isdigit() else k for k in path.split('/')]
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def params_from_diffusers(tensors: dict[str, np.ndarray], config,
                          flip_sin_to_cos: bool) -> dict:
  """Our parameter tree (a pure dict, shaped as `abstract_model`'s) from a
  UNet2DModel's tensors; a missing, extra or misshapen tensor is one line."""
  used: set[str] = set()

  def take(name):
    if name not in tensors:
      raise UserError(f'the weights have no tensor {name} (the config says '
                      'the model has it)')
    used.add(name)
    return tensors[name]

  params: dict = {}
  for ours, theirs, kind in _pairs(config):
    w, b = f'{theirs}.weight', f'{theirs}.bias'
    if kind == 'conv':
      _set(params, f'{ours}/kernel', _torch_conv(take(w)))
      _set(params, f'{ours}/bias', take(b))
    elif kind == 'skip':
      _set(params, f'{ours}/kernel', take(w)[:, :, 0, 0].T)
      _set(params, f'{ours}/bias', take(b))
    elif kind == 'linear':
      _set(params, f'{ours}/kernel', take(w).T)
      _set(params, f'{ours}/bias', take(b))
    elif kind == 'norm':
      _set(params, f'{ours}/scale', take(w))
      _set(params, f'{ours}/bias', take(b))
    elif kind == 'attn':
      _set(params, f'{ours}/norm/scale', take(f'{theirs}.group_norm.weight'))
      _set(params, f'{ours}/norm/bias', take(f'{theirs}.group_norm.bias'))
      _set(params, f'{ours}/qkv/kernel', np.concatenate(
          [take(f'{theirs}.to_{x}.weight').T for x in 'qkv'], axis=1))
      _set(params, f'{ours}/qkv/bias', np.concatenate(
          [take(f'{theirs}.to_{x}.bias') for x in 'qkv']))
      _set(params, f'{ours}/proj/kernel', take(f'{theirs}.to_out.0.weight').T)
      _set(params, f'{ours}/proj/bias', take(f'{theirs}.to_out.0.bias'))
    elif kind == 'embed':
      e = take(w)
      k = config.data.num_classes
      if len(e) == k:   # diffusers has no null label: a zero row adds nothing
        e = np.concatenate([e, np.zeros((1, e.shape[1]), e.dtype)])
      _set(params, f'{ours}/embedding', e)
  if flip_sin_to_cos:   # diffusers' [cos, sin] embedding into our [sin, cos]
    kernel = params['temb1']['kernel']
    half = config.model.ch // 2
    perm = np.concatenate([np.arange(half, 2 * half), np.arange(half),
                           np.arange(2 * half, kernel.shape[0])])
    params['temb1']['kernel'] = kernel[perm]
  extra = sorted(set(tensors) - used)
  if extra:
    raise UserError(f'the weights have {len(extra)} tensors this config does '
                    f'not use (e.g. {extra[0]}); is config.json the right one?')
  _, abstract = builders.abstract_model(config)
  want = {'/'.join(str(getattr(k, 'key', k)) for k in p): v.shape
          for p, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  got = {'/'.join(str(getattr(k, 'key', k)) for k in p): v.shape
         for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, shape in want.items():
    if got.get(path) != shape:
      raise UserError(f'tensor for {path} has shape {got.get(path)}, the model '
                      f'needs {shape}')
  return params


def import_folder(src: str, workdir: str, base=None) -> tuple[int, Any]:
  """Writes `src` (a diffusers UNet2DModel or pipeline folder) as a workdir
  with one checkpoint at step 0 (EMA = the weights, a fresh optimizer), which
  load(), sample.py, evaluate and train.py (fine-tuning) accept."""
  if files.exists(files.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir} already holds checkpoints; import into a new '
                    'workdir')
  unet_dir, sched_dir = find_folders(src)
  unet_cfg = read_json(os.path.join(unet_dir, 'config.json'))
  sched_cfg = (read_json(os.path.join(sched_dir, 'scheduler_config.json'))
               if sched_dir else None)
  config, flip = config_from_diffusers(unet_cfg, sched_cfg, base)
  params = params_from_diffusers(read_weights(unet_dir), config, flip)
  from ddpm_jax.train import step as step_lib
  state = step_lib.TrainState(   # as init_train_state makes it, with these weights
      step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
      opt_state=step_lib.make_optimizer(config.training).init(params),
      rng=sampling.seed_key(config.seed))
  with Checkpointer(workdir) as ckpt:
    ckpt.save(0, state.to_saveable(), {'config': json.loads(config.to_json()),
                                       'imported_from': os.path.abspath(src)})
    ckpt.wait()
  return 0, config


def export_workdir(workdir: str, out: str, step: int | None = None,
                   use_ema: bool = True, overwrite: bool = False) -> list[str]:
  """Writes a workdir's checkpoint as a diffusers folder: config.json,
  diffusion_pytorch_model.safetensors and scheduler_config.json, which
  UNet2DModel.from_pretrained and DDPMScheduler.from_pretrained load."""
  from ddpm_jax.pipeline import load, read_config
  paths = [os.path.join(out, f) for f in ('config.json', WEIGHTS, 'scheduler_config.json')]
  for p in paths:
    if os.path.exists(p) and not overwrite:
      raise UserError(f'{p} exists; pass overwrite=True to replace it')
  step, c = read_config(workdir, step)   # refuse before restoring any array
  kind = config_lib.model_kind(c)
  m = c.model
  if kind.text or kind.latent or m.patch_size != 1 or m.ch_mult[0] != 1:
    what = ('a text-conditioned model' if kind.text else 'a latent model'
            if kind.latent else f'model.patch_size={m.patch_size}'
            if m.patch_size != 1 else f'model.ch_mult[0]={m.ch_mult[0]}')
    raise UserError(f'{workdir} holds {what}, which diffusers\' UNet2DModel '
                    'cannot represent')
  if c.diffusion.schedule not in (*_SCHEDULE_NAMES, 'trained'):
    raise UserError(f'diffusion.schedule={c.diffusion.schedule!r} has no '
                    'diffusers beta_schedule')
  params = jax.device_get(load(workdir, step, use_ema=use_ema).params)
  tensors: dict[str, np.ndarray] = {}

  def get(path):
    node = params
    for k in path.split('/'):
      node = node[int(k) if k.isdigit() else k]
    return np.asarray(node, np.float32)

  for ours, theirs, kind_ in _pairs(c):
    w, b = f'{theirs}.weight', f'{theirs}.bias'
    if kind_ == 'conv':
      tensors[w] = np.transpose(get(f'{ours}/kernel'), (3, 2, 0, 1))
      tensors[b] = get(f'{ours}/bias')
    elif kind_ == 'skip':
      tensors[w] = get(f'{ours}/kernel').T[:, :, None, None]
      tensors[b] = get(f'{ours}/bias')
    elif kind_ == 'linear':
      tensors[w], tensors[b] = get(f'{ours}/kernel').T, get(f'{ours}/bias')
    elif kind_ == 'norm':
      tensors[w], tensors[b] = get(f'{ours}/scale'), get(f'{ours}/bias')
    elif kind_ == 'attn':
      tensors[f'{theirs}.group_norm.weight'] = get(f'{ours}/norm/scale')
      tensors[f'{theirs}.group_norm.bias'] = get(f'{ours}/norm/bias')
      q, k, v = np.split(get(f'{ours}/qkv/kernel'), 3, axis=1)
      qb, kb, vb = np.split(get(f'{ours}/qkv/bias'), 3)
      for name, (kw, kb_) in zip('qkv', ((q, qb), (k, kb), (v, vb))):
        tensors[f'{theirs}.to_{name}.weight'] = kw.T
        tensors[f'{theirs}.to_{name}.bias'] = kb_
      tensors[f'{theirs}.to_out.0.weight'] = get(f'{ours}/proj/kernel').T
      tensors[f'{theirs}.to_out.0.bias'] = get(f'{ours}/proj/bias')
    elif kind_ == 'embed':
      tensors[w] = get(f'{ours}/embedding')   # with our null row, recorded below
  n = len(m.ch_mult)
  from ddpm_jax.models.unet import attention_levels
  attn = set(attention_levels(c.data.image_size, m.ch_mult, m.attn_resolutions))
  unet_cfg = {
      '_class_name': 'UNet2DModel', 'sample_size': c.data.image_size,
      'in_channels': c.data.channels, 'out_channels': c.data.channels,
      'block_out_channels': [m.ch * k for k in m.ch_mult],
      'layers_per_block': m.num_res_blocks,
      'down_block_types': ['AttnDownBlock2D' if l in attn else 'DownBlock2D' for l in range(n)],
      'up_block_types': ['AttnUpBlock2D' if n - 1 - u in attn else 'UpBlock2D' for u in range(n)],
      'norm_num_groups': m.num_groups, 'norm_eps': m.norm_eps,
      'attention_head_dim': m.attn_head_dim or None,
      'downsample_padding': m.downsample_padding, 'flip_sin_to_cos': False,
      'freq_shift': m.freq_shift, 'act_fn': 'silu', 'time_embedding_type': 'positional',
      'mid_block_scale_factor': 1, 'resnet_time_scale_shift': 'default',
      'add_attention': True, 'center_input_sample': False, 'dropout': m.dropout,
      'downsample_type': 'conv', 'upsample_type': 'conv'}
  if m.class_conditional:
    unet_cfg['num_class_embeds'] = c.data.num_classes + 1
    unet_cfg[NULL_CLASS_KEY] = c.data.num_classes
  sched = {'_class_name': 'DDPMScheduler',
           'num_train_timesteps': c.diffusion.num_timesteps,
           'beta_schedule': _SCHEDULE_NAMES.get(c.diffusion.schedule, 'linear'),
           'trained_betas': (list(c.diffusion.trained_betas)
                             if c.diffusion.schedule == 'trained' else None),
           'beta_start': c.diffusion.beta_start, 'beta_end': c.diffusion.beta_end,
           'prediction_type': _inverse(_PREDICTIONS)[c.diffusion.prediction],
           'variance_type': _inverse(_VARIANCES)[c.sampling.var_type],
           'clip_sample': bool(c.sampling.clip_x0), 'clip_sample_range': 1.0,
           'timestep_spacing': _inverse(_SPACINGS).get(c.sampling.spacing, 'leading'),
           'steps_offset': 0}
  from safetensors.numpy import save
  from ddpm_jax.files import atomic_write_all
  os.makedirs(out, exist_ok=True)
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}  # safetensors
  # writes the buffer as it lies in memory: a transposed view would be scrambled
  blobs = [json.dumps(unet_cfg, indent=2).encode(), save(tensors, metadata={'format': 'pt'}),
           json.dumps(sched, indent=2).encode()]
  atomic_write_all(paths, [lambda f, b=b: f.write(b) for b in blobs])
  return paths
