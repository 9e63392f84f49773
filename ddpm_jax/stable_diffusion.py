"""Stable Diffusion 1.x/2.x: a diffusers pipeline folder as a workdir, and
the Pipeline that samples it under jax.jit.

    python -m ddpm_jax.cli.import_diffusers ./stable-diffusion-v1-5 --workdir W
    pipe = load(W)                                   # or load(W, vae=DIR)
    pipe.sample(num=4, prompt='a photo of a cat', negative_prompt='blurry',
                sampler='dpm++2m', spacing='karras', num_steps=25)

A folder is `model_index.json` with `unet/`, `vae/`, `text_encoder/`,
`tokenizer/` and `scheduler/` (weights as .safetensors). The import checks
every config (anything SD 1.x/2.x does not use is one line naming it; an
SDXL folder says it is not supported yet), maps the weights, and writes W:
one checkpoint (step 0) holding {'unet', 'vae', 'text'} and the configs,
plus a copy of the tokenizer files. Sampling runs the CLIP text model once
per prompt batch, the scan over latents with classifier-free guidance, and
the VAE decode in one jitted function; the samplers follow diffusers'
schedulers step for step under the folder's scheduler config
(diffusers_schedulers.py). Every editing mode of the Pipeline works: img2img,
inpainting (latent masking with a 4-channel UNet; a 9-channel inpainting
UNet takes the mask and the masked image as input), outpainting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ddpm_jax import checks
from ddpm_jax import clip_tokenizer
from ddpm_jax import config as config_lib
from ddpm_jax import diffusers_schedulers
from ddpm_jax import files
from ddpm_jax import memory
from ddpm_jax import options
from ddpm_jax import sampling
from ddpm_jax.checkpoint import Checkpointer
from ddpm_jax.diffusers_format import read_json, read_safetensors
from ddpm_jax.errors import UserError
from ddpm_jax.models import clip as clip_lib
from ddpm_jax.models import sd_unet, sd_vae
from ddpm_jax.pipeline import Pipeline

PIPELINES = ('StableDiffusionPipeline', 'StableDiffusionImg2ImgPipeline',
             'StableDiffusionInpaintPipeline')
PARTS = ('unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler')
_PREDICTIONS = {'epsilon': 'eps', 'v_prediction': 'v'}
# The samplers that follow a diffusers scheduler (diffusers_schedulers.py).
SD_SAMPLERS = ('ddim', 'euler', 'euler_a', 'dpm++2m', 'heun')
_KARRAS = ('euler', 'dpm++2m', 'heun')   # those that take Karras σ's


def is_sd_folder(src: str) -> bool:
  """Whether `src` is a Stable Diffusion (or SDXL) pipeline folder."""
  path = os.path.join(src, 'model_index.json')
  if not os.path.isfile(path):
    return False
  return str(read_json(path).get('_class_name', '')).startswith('StableDiffusion')


def _weights(folder: str, name: str) -> dict[str, np.ndarray]:
  path = os.path.join(folder, name)
  if not os.path.isfile(path):
    raise UserError(f'{folder} has no {name} (only .safetensors weights are '
                    'read; convert a .bin with diffusers save_pretrained('
                    'safe_serialization=True))')
  return read_safetensors(path)


def read_folder(src: str) -> dict[str, Any]:
  """The checked configs of a pipeline folder: {'pipeline', 'unet', 'vae',
  'text_encoder', 'scheduler'}."""
  if not os.path.isdir(src):
    raise UserError(f'{src} is not a folder' if os.path.exists(src)
                    else f'{src} does not exist')
  index = read_json(os.path.join(src, 'model_index.json'))
  name = str(index.get('_class_name', ''))
  if 'XL' in name or 'text_encoder_2' in index:
    raise UserError(f'{src} is an SDXL pipeline ({name}): SDXL (two text '
                    'encoders, pooled text and size embeddings) is not '
                    'supported yet; SD 1.x and 2.x are')
  if name not in PIPELINES:
    raise UserError(f'{src} holds a {name or "pipeline without _class_name"}; '
                    f'the importer takes {", ".join(PIPELINES)}')
  for part in PARTS:
    if not os.path.isdir(os.path.join(src, part)):
      raise UserError(f'{src} has no {part}/ folder (a Stable Diffusion '
                      f'pipeline has {", ".join(p + "/" for p in PARTS)})')
  out = {'pipeline': name,
         'unet': read_json(os.path.join(src, 'unet', 'config.json')),
         'vae': read_json(os.path.join(src, 'vae', 'config.json')),
         'text_encoder': read_json(os.path.join(src, 'text_encoder', 'config.json')),
         'scheduler': read_json(os.path.join(src, 'scheduler',
                                              'scheduler_config.json'))}
  sd_unet.check_config(out['unet'])
  sd_vae.check_config(out['vae'])
  pred = out['scheduler'].get('prediction_type', 'epsilon')
  if pred not in _PREDICTIONS:
    raise UserError(f"scheduler prediction_type {pred!r} is not supported "
                    f"(only {', '.join(_PREDICTIONS)})")
  ctx = out['unet'].get('cross_attention_dim', 1280)
  width = out['text_encoder'].get('hidden_size')
  if ctx != width:
    raise UserError(f"the UNet's cross_attention_dim {ctx} does not match the "
                    f"text encoder's hidden_size {width}")
  if out['vae'].get('latent_channels', 4) != out['unet'].get('out_channels', 4):
    raise UserError("the VAE's latent_channels and the UNet's out_channels "
                    'differ')
  return out


def _abstract(cfgs: dict, dtype: str = 'float32') -> dict[str, Any]:
  """The three networks with shapes only."""
  text = nnx.eval_shape(lambda: clip_lib.ClipTextModel.from_config(
      cfgs['text_encoder'], dtype=jnp.dtype(dtype)))
  return {'unet': sd_unet.abstract_unet(cfgs['unet'], dtype),
          'vae': sd_vae.abstract_vae(cfgs['vae'], dtype), 'text': text}


def _vae_factor(vae_cfg: dict) -> int:
  """f: the AutoencoderKL's downsampling factor (8 for SD)."""
  return 2 ** (len(vae_cfg.get('block_out_channels', (64,))) - 1)


def read_vae(folder: str, dtype: str = 'float32') -> tuple[dict, Any, Any]:
  """(config, abstract model, parameters) of a diffusers AutoencoderKL
  folder (--vae)."""
  if not os.path.isdir(folder):
    raise UserError(f'vae {folder} is not a folder' if os.path.exists(folder)
                    else f'vae {folder} does not exist')
  if os.path.isdir(os.path.join(folder, 'vae')):
    folder = os.path.join(folder, 'vae')   # a whole pipeline: take its VAE
  cfg = read_json(os.path.join(folder, 'config.json'))
  sd_vae.check_config(cfg)
  model = sd_vae.abstract_vae(cfg, dtype)
  return cfg, model, sd_vae.params_from_diffusers(
      _weights(folder, 'diffusion_pytorch_model.safetensors'), model)


def sd_config(cfgs: dict) -> ml_collections.ConfigDict:
  """Our config of an imported pipeline: the diffusers configs kept verbatim
  (as JSON) under `stable_diffusion`, and the fields the Pipeline reads."""
  u, s = cfgs['unet'], cfgs['scheduler']
  c = config_lib.base_config()
  c.stable_diffusion = ml_collections.ConfigDict({
      'pipeline': cfgs['pipeline'], 'dtype': 'float32',
      **{k: json.dumps(cfgs[k], sort_keys=True)
         for k in ('unet', 'vae', 'text_encoder', 'scheduler')}})
  c.data.name = 'stable_diffusion'
  c.data.image_size = int(u.get('sample_size', 64)) * _vae_factor(cfgs['vae'])
  c.data.channels = 3
  c.data.num_classes = 0
  c.model.text_conditional = True
  c.model.class_conditional = False
  c.diffusion.num_timesteps = int(s.get('num_train_timesteps', 1000))
  c.diffusion.prediction = _PREDICTIONS[s.get('prediction_type', 'epsilon')]
  c.sampling.sampler = 'dpm++2m'
  c.sampling.spacing = 'karras'
  c.sampling.num_steps = 25
  c.sampling.guidance_scale = 7.5
  c.sampling.clip_x0 = bool(s.get('clip_sample', False))
  return c


def configs_of(config) -> dict[str, Any]:
  sd = config.stable_diffusion
  return {'pipeline': sd.pipeline, **{k: json.loads(sd[k]) for k in (
      'unet', 'vae', 'text_encoder', 'scheduler')}}


def _cast(tree: Any, dtype: str) -> Any:
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.dtype(dtype)), tree)


def import_pipeline(src: str, workdir: str, dtype: str = 'float32'
                    ) -> tuple[int, Any]:
  """Writes a diffusers SD 1.x/2.x folder as a workdir (checkpoint 0); with
  dtype='bfloat16' (or 'float16') the weights are stored and run in that
  type (half the memory; norms and softmax stay float32)."""
  dtype = checks.choice('dtype', dtype, options.DTYPES)
  if files.exists(files.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir} already holds checkpoints; import into a new '
                    'workdir')
  cfgs = read_folder(src)
  tok_dir = os.path.join(src, 'tokenizer')
  clip_tokenizer.ClipTokenizer.from_folder(tok_dir)   # readable, or one line
  models = _abstract(cfgs)
  params = {
      'unet': sd_unet.params_from_diffusers(_weights(
          os.path.join(src, 'unet'), 'diffusion_pytorch_model.safetensors'),
          models['unet']),
      'vae': sd_vae.params_from_diffusers(_weights(
          os.path.join(src, 'vae'), 'diffusion_pytorch_model.safetensors'),
          models['vae']),
      'text': clip_lib.params_from_transformers(_weights(
          os.path.join(src, 'text_encoder'), 'model.safetensors'),
          models['text'])}
  config = sd_config(cfgs)
  config.stable_diffusion.dtype = dtype
  files.makedirs(files.join(workdir, 'tokenizer'))
  for name in sorted(os.listdir(tok_dir)):
    if os.path.isfile(os.path.join(tok_dir, name)):
      data = files.read_bytes(os.path.join(tok_dir, name))
      files.atomic_write(files.join(workdir, 'tokenizer', name),
                         lambda f, d=data: f.write(d))
  with Checkpointer(workdir) as ckpt:
    ckpt.save(0, {'params': _cast(params, dtype)},
              {'config': json.loads(config.to_json()),
               'imported_from': os.path.abspath(src)})
    ckpt.wait()
  return 0, config


def _levels(cfgs: dict) -> tuple[list, list]:
  """memory.Level lists of the UNet (latent canvas) and the VAE decoder
  (pixel canvas)."""
  u = cfgs['unet']
  chans = list(u.get('block_out_channels', (320, 640, 1280, 1280)))
  heads = u.get('num_attention_heads') or u.get('attention_head_dim', 8)
  heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(chans)
  if not u.get('num_attention_heads') and isinstance(
      u.get('attention_head_dim'), (list, tuple)):
    heads = [c // h for c, h in zip(chans, heads)]   # SD 2.x: head widths
  types = list(u.get('down_block_types', ()))
  unet = [memory.Level(2 ** i, c, u.get('layers_per_block', 2) + 1,
                       heads[i] if 'CrossAttn' in types[i] else 0,
                       77 if 'CrossAttn' in types[i] else 0)
          for i, c in enumerate(chans)]
  v = cfgs['vae'].get('block_out_channels', (128, 256, 512, 512))
  decoder = [memory.Level(2 ** i, c, 0, int(i == len(v) - 1))
             for i, c in enumerate(v)]
  return unet, decoder


@dataclasses.dataclass
class SDPipeline(Pipeline):
  """A Stable Diffusion workdir ready to sample (see the module docstring)."""
  tokenizer: Any = None
  cfgs: dict = dataclasses.field(default_factory=dict)
  vae_override: tuple | None = None   # (config, model, params) of --vae
  param_shapes: Any = None   # the checkpoint's parameters, shapes only
  encode_text: Any = None   # (params, ids [B, L]) -> context [B, L, D]

  @property
  def _inpaint_unet(self) -> bool:
    return self.cfgs['unet'].get('in_channels', 4) == 9

  @property
  def _vae_cfg(self) -> dict:
    return self.vae_override[0] if self.vae_override else self.cfgs['vae']

  def _default_batch(self, shape) -> int:
    return 1 if shape[0] * shape[1] >= 256 * 256 else 4

  def sampler(self, name: str | None = None, num_steps: int | None = None,
              **sampler_options):
    s = self.config.sampling
    name = checks.choice('sampler', s.sampler if name is None else name,
                         SD_SAMPLERS)
    T = self.config.diffusion.num_timesteps
    num_steps = s.num_steps if num_steps is None else num_steps
    if not 1 <= num_steps <= T:
      raise UserError(f'num_steps must be in [1, {T}], got {num_steps}')
    spacing = sampler_options.pop('spacing', None)
    if spacing is None:   # the config's spacing goes with the config's sampler
      spacing = s.spacing if name == s.sampler else 'uniform'
    else:
      spacing = checks.choice('spacing', spacing, options.SPACINGS)
    if sampler_options:
      raise UserError(f'a Stable Diffusion sampler takes only spacing; got '
                      f'{sorted(sampler_options)}')
    karras = spacing == 'karras'
    if karras and name not in _KARRAS:
      raise UserError(f'spacing karras works with {", ".join(_KARRAS)}, not {name}')
    return diffusers_schedulers.diffusers_sampler(
        name, self.cfgs['scheduler'], num_steps,
        prediction=self.cfgs['scheduler'].get('prediction_type', 'epsilon'),
        karras=karras)

  def _tokens(self, prompts, what: str) -> np.ndarray:
    for p in prompts:
      if not isinstance(p, str):
        raise UserError(f'{what} must be a string, got {type(p).__name__}')
    ids, cut = self.tokenizer.encode(list(prompts))
    if cut:
      print(f'warning: {cut} prompt(s) are longer than '
            f'{self.tokenizer.max_length} tokens and were cut',
            file=sys.stderr)
    return ids

  def _factor(self) -> int:
    """The VAE's factor: diffusers' UNet takes latents of any size."""
    return self.codec.factor

  def _scan_shape(self, image_shape) -> tuple[int, int, int]:
    h, w, _ = image_shape
    f = self.codec.factor
    return (h // f, w // f, self.cfgs['unet'].get('out_channels', 4))

  def _network_levels(self) -> tuple[list, list]:
    return _levels(dict(self.cfgs, vae=self._vae_cfg))

  def _scan_options(self) -> dict[str, Any]:
    return {'condition': self.encode_text, 'unet_takes_mask': self._inpaint_unet}

  def restore(self, workdir: str, use_ema: bool = True) -> None:
    del use_ema   # an imported pipeline has one set of weights
    dtype = jnp.dtype(self.config.stable_diffusion.get('dtype', 'float32'))
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype),
                          self.param_shapes)
    with Checkpointer(workdir, read_only=True) as ckpt:
      params = ckpt.restore_params(self.step, 'params', target, self.mesh)
    if self.vae_override:
      params = dict(params, vae=_cast(self.vae_override[2], dtype))
    self.params = params


def open_sd_pipeline(workdir: str, config, step: int, mesh, given: bool,
                     vae: str | None = None) -> SDPipeline:
  cfgs = configs_of(config)
  dtype = config.stable_diffusion.get('dtype', 'float32')
  vae_override = read_vae(vae, dtype) if vae else None
  models = _abstract(cfgs, dtype)   # the checkpoint's networks
  vae_cfg, vae_model = (vae_override[:2] if vae_override
                        else (cfgs['vae'], models['vae']))
  unet_apply = sd_unet.make_unet_apply(nnx.split(models['unet'], nnx.Param)[0])
  text_graph = nnx.split(models['text'], nnx.Param)[0]
  vae_fns = sd_vae.make_vae_fns(nnx.split(vae_model, nnx.Param)[0])
  scale = float(vae_cfg.get('scaling_factor', 0.18215))
  shift = vae_cfg.get('shift_factor') or 0.0

  def apply(params, x_BHWC, t_B, ctx_BLD):
    return unet_apply(params['unet'], x_BHWC, t_B, ctx_BLD)

  def encode(params, x_BHWC):
    mean, _ = vae_fns.encode(params['vae'], x_BHWC)
    return (mean - shift) * scale

  def decode(params, z):
    return jnp.clip(vae_fns.decode(params['vae'], z / scale + shift), -1.0, 1.0)

  tok = clip_tokenizer.ClipTokenizer.from_folder(files.join(workdir, 'tokenizer'))
  return SDPipeline(
      config, apply, None, mesh, step,
      sampling.Codec(encode, decode, _vae_factor(vae_cfg)),
      step_given=given, tokenizer=tok, cfgs=cfgs, vae_override=vae_override,
      param_shapes={k: nnx.to_pure_dict(nnx.state(m, nnx.Param))
                    for k, m in models.items()},
      encode_text=lambda params, ids: nnx.merge(text_graph, params['text'])(ids))
