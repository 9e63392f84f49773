"""What turns a config into objects: betas and schedule, the network (and its
shapes), the loss, the ε-predictor the samplers call, a sampler, and the
condition of guidance's unconditional branch. The config's schema and
validation live in config.py."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ddpm_jax import checks
from ddpm_jax import diffusion
from ddpm_jax import options
from ddpm_jax import samplers as samplers_lib
from ddpm_jax.config import model_kind, unet_input_shape
from ddpm_jax.errors import UserError
from ddpm_jax.schedules import Schedule, get_betas, make_schedule, trained_betas


def null_condition(config, n: int) -> np.ndarray | None:
  """What the unconditional branch of guidance gets for n images: the null
  label, a text model's empty prompt (tokens [n, L]), or None."""
  kind = model_kind(config)
  if kind.text:
    from ddpm_jax import tokenizer
    return np.repeat(tokenizer.tokenize('', config.model.text_max_len)[None],
                     n, axis=0)
  if kind.classes:
    return np.full((n,), config.data.num_classes, np.int32)
  return None


def betas_from_config(config) -> np.ndarray:
  d = config.diffusion
  if d.schedule == 'cosine':  # defined by ᾱ alone; beta_start/end do not apply
    return get_betas(d.schedule, d.num_timesteps)
  if d.schedule == 'trained':  # one beta per step, in the config
    return trained_betas(d.num_timesteps, d.trained_betas)
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


def abstract_model(config) -> tuple[Any, Any]:
  """(graphdef, parameter shapes) of `model_from_config(config)`, with no
  array allocated. Built with `Keys`, not nnx.Rngs: under eval_shape each
  nnx.Rngs update searches the whole trace so far (count_params over the
  shipped configs: 15 s with nnx.Rngs, 3 s with Keys)."""
  from ddpm_jax.models.layers import abstract_params
  from ddpm_jax.models.torch_weights import Keys
  return abstract_params(lambda: model_from_config(config, Keys(config.seed)))


def model_from_config(config, rngs=None):
  """The model `config` trains, with fresh parameters (seeded by
  config.seed, or from `rngs`): the UNet (over pixels or latents), or the
  autoencoder."""
  d = config.data
  if model_kind(config).autoencoder:
    from ddpm_jax.models.autoencoder import build_autoencoder
    return build_autoencoder(config.autoencoder, d.channels, seed=config.seed,
                             rngs=rngs)
  from ddpm_jax.models.unet import build_unet
  size, _, channels = unet_input_shape(config)
  return build_unet(config.model, size, channels, d.num_classes,
                    seed=config.seed, rngs=rngs)


def sampler_from_config(config, name: str | None = None,
                        num_steps: int | None = None, **sampler_options
                        ) -> samplers_lib.Sampler:
  """The sampler named (default: config.sampling.sampler) with the config's
  step count, variance, clipping and spacing unless given. Every check on a
  sampler request (name, step range, option names and values) lives here."""
  s = config.sampling
  name = checks.choice('sampler', s.sampler if name is None else name,
                       options.SAMPLERS)
  T = config.diffusion.num_timesteps
  if num_steps is None:
    num_steps = s.num_steps or T   # the config's 0 means all T steps
  if not 1 <= num_steps <= T:
    raise UserError(f'num_steps must be in [1, {T}] (the number of sampling '
                    f'steps), got {num_steps}')
  accepted = {p.name for p in inspect.signature(
      samplers_lib.SAMPLERS[name]).parameters.values()
      if p.kind == inspect.Parameter.KEYWORD_ONLY}
  for key in sampler_options:
    if key not in accepted:
      raise UserError(f'the {name} sampler has no option {key!r}; it takes '
                      f'{sorted(accepted)}')
  defaults = {'var_type': s.var_type, 'clip_x0': s.clip_x0, 'spacing': s.spacing}
  opts = {**{k: v for k, v in defaults.items() if k in accepted},
          **sampler_options}
  checked = {'eta': lambda v: checks.number('eta', v, low=0),
             'clip_x0': lambda v: checks.boolean('clip_x0', v),
             'spacing': lambda v: checks.choice('spacing', v, options.SPACINGS),
             'var_type': lambda v: checks.choice('var_type', v, options.VAR_TYPES)}
  opts = {k: checked[k](v) if k in checked else v for k, v in opts.items()}
  if opts.get('spacing') == 'karras' and name not in options.SIGMA_SAMPLERS:
    raise UserError(f"spacing 'karras' is a σ grid: use it with one of "
                    f"{list(options.SIGMA_SAMPLERS)}, not {name}")
  return samplers_lib.make_sampler(name, betas_from_config(config), num_steps,
                                   **opts)
