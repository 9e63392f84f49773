"""The public API: restore a checkpoint and sample from it.

    from ddpm_jax import load
    pipe = load('workdirs/mnist')            # EMA weights of the latest step
    images = pipe.sample(num=16, seed=0)     # float32 [16, 28, 28, 1] in [-1, 1]

Every mode (plain, class-guided, img2img, inpainting) is one jitted
`lax.scan`; seeds, labels, the guidance scale and the input images are
runtime arguments, so changing them does not recompile.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import diffusion
from ddpm_jax import samplers as samplers_lib
from ddpm_jax.checkpoint import Checkpointer, config_from_meta
from ddpm_jax.errors import UserError
from ddpm_jax.xla_options import compiler_options
from ddpm_jax.training import (Setup, abstract_state, betas_from_config,
                               make_mesh)


def guided_eps_fn(apply: Callable, params, y_B: jax.Array | None,
                  scale: jax.Array | None, null_label: int):
  """ε_θ(x, t, y); with `scale` w: ε_u + w (ε_c − ε_u), both in one call."""
  if scale is None:
    return lambda x, t: apply(params, x, t, y_B)

  def eps_fn(x, t):
    B = x.shape[0]
    y2 = jnp.concatenate([y_B, jnp.full_like(y_B, null_label)])
    eps = apply(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]), y2)
    eps_c, eps_u = eps[:B], eps[B:]
    return eps_u + scale.astype(eps.dtype) * (eps_c - eps_u)
  return eps_fn


def strength_to_start(strength: float, num_steps: int) -> int:
  """Grid index img2img starts from: s·n steps are run (-1: none)."""
  return int(round(strength * num_steps)) - 1


def sampler_from_config(config, name: str | None = None,
                        num_steps: int | None = None, **kwargs
                        ) -> samplers_lib.Sampler:
  """The sampler named (default: config.sampling.sampler), with the config's
  step count, variance, clipping and spacing unless given."""
  s = config.sampling
  name = name or s.sampler
  T = config.diffusion.num_timesteps
  num_steps = num_steps or s.num_steps or None
  if num_steps is not None and not 1 <= num_steps <= T:
    raise UserError(f'number of steps must be in [1, {T}], got {num_steps}')
  if name == 'ddpm':
    kwargs.setdefault('var_type', s.var_type)
  kwargs.setdefault('clip_x0', s.clip_x0)
  kwargs.setdefault('spacing', s.spacing)
  if name not in samplers_lib.SAMPLERS:
    raise UserError(f'unknown sampler {name!r}; choose one of '
                    f'{sorted(samplers_lib.SAMPLERS)}')
  try:
    return samplers_lib.make_sampler(name, betas_from_config(config),
                                     num_steps, **kwargs)
  except (TypeError, ValueError) as e:
    raise UserError(f'bad sampler options for {name}: {e}') from None


def make_sample_fn(apply: Callable, sampler: samplers_lib.Sampler,
                   shape: tuple[int, ...], mesh: Mesh | None = None,
                   capture_every: int = 0, *, null_label: int = 0,
                   strength: float | None = None, jumps: int = 0) -> Callable:
  """jit(fn)(params, key, y=None, scale=None, x_init=None, mask=None)
  -> (x0, frames).

  x_T is drawn inside from the key. With `strength` (img2img) `x_init` is
  noised to t = strength·T and denoised from there; with `mask` (1 =
  regenerate) the known pixels of `x_init` are re-imposed at every step.
  """
  batch_spec = None
  if mesh is not None and shape[0] % mesh.size == 0:
    batch_spec = NamedSharding(mesh, P('data'))
  start = None
  if strength is not None:
    start = strength_to_start(strength, sampler.num_steps)

  def fn(params, key, y=None, scale=None, x_init=None, mask=None):
    init_key, loop_key = jax.random.split(key)
    noise = jax.random.normal(init_key, shape, jnp.float32)
    if batch_spec is not None:
      noise = jax.lax.with_sharding_constraint(noise, batch_spec)
    eps_fn = guided_eps_fn(apply, params, y, scale, null_label)
    if start is None:
      x_T = noise
    elif start < 0:
      x_T = x_init                       # strength 0: nothing to do
    elif start == sampler.num_steps - 1 and strength >= 1.0:
      x_T = noise                        # strength 1: plain generation
    else:
      t_B = jnp.full(shape[:1], start)
      x_T = diffusion.q_sample(sampler.schedule, x_init, t_B, noise)
    if jumps:
      x = samplers_lib.sample_inpaint_with_jumps(sampler, eps_fn, loop_key, x_T,
                                                 x_init, mask, jumps)
      return x, None
    return sampler.sample(
        eps_fn, loop_key, x_T, start=start, capture_every=capture_every,
        known_x0=x_init if mask is not None else None, known_mask=mask)
  return jax.jit(fn, compiler_options=compiler_options())


@dataclasses.dataclass
class Pipeline:
  """A restored model ready to sample; jitted samplers are cached by shape."""
  config: Any
  setup: Setup
  params: Any
  mesh: Mesh
  step: int
  _cache: dict = dataclasses.field(default_factory=dict)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    d = self.config.data
    return (d.image_size, d.image_size, d.channels)

  @property
  def num_classes(self) -> int:
    m = self.config.model
    return int(self.config.data.num_classes) if m.class_conditional else 0

  def sampler(self, name: str | None = None, num_steps: int | None = None,
              **kwargs) -> samplers_lib.Sampler:
    return sampler_from_config(self.config, name, num_steps, **kwargs)

  def _labels(self, labels, num: int) -> np.ndarray | None:
    if labels is None:
      return None
    if not self.num_classes:
      raise UserError('labels need a class-conditional model '
                      '(model.class_conditional); this one is unconditional')
    y = np.asarray(labels, np.int64).reshape(-1)
    if y.size == 0 or num % y.size:
      raise UserError(f'{y.size} labels do not divide {num} images')
    if y.min() < 0 or y.max() >= self.num_classes:
      raise UserError(f'labels must be in [0, {self.num_classes - 1}], got '
                      f'{sorted(set(y.tolist()))}')
    return np.repeat(y, num // y.size).astype(np.int32)

  def _image(self, x, num: int, what: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
      x = np.broadcast_to(x[None], (num,) + x.shape)
    if x.shape != (num,) + self.image_shape:
      raise UserError(f'{what} has shape {tuple(x.shape[1:])}, the model makes '
                      f'{self.image_shape}')
    return x

  def sample(self, num: int = 16, seed: int = 0, *, sampler: str | None = None,
             num_steps: int | None = None, labels: Sequence[int] | int | None = None,
             guidance_scale: float | None = None, init_image=None,
             strength: float | None = None, mask=None, jumps: int = 0,
             capture_every: int = 0, return_frames: bool = False,
             **sampler_kwargs):
    """Samples `num` images in [-1, 1] (float32 NumPy, NHWC).

    labels: class per image (repeated to fill `num`); guidance_scale: the
    classifier-free guidance weight w (0: unconditional, 1: conditional).
    init_image ([H, W, C] or [num, H, W, C] in [-1, 1]) with `strength`
    is img2img (SDEdit); with `mask` (1 = regenerate) it is inpainting,
    with `jumps` RePaint resamplings of every 10-step block (ddpm, ddim).
    """
    if num <= 0:
      raise UserError(f'number of images must be positive, got {num}')
    if guidance_scale is not None and not self.num_classes:
      raise UserError('a guidance scale needs a class-conditional model; '
                      'this one is unconditional')
    y = self._labels(labels, num)
    if guidance_scale is not None and y is None:
      raise UserError('a guidance scale needs labels')
    if y is None and self.num_classes:
      y = np.full((num,), self.num_classes, np.int32)   # the null label
    if strength is not None and not 0.0 <= strength <= 1.0:
      raise UserError(f'strength must be in [0, 1], got {strength}')
    if (strength is not None or mask is not None) and init_image is None:
      raise UserError('strength and mask need an init image')
    if strength is not None and mask is not None:
      raise UserError('use either strength (img2img) or mask (inpainting)')
    if jumps < 0 or (jumps and mask is None):
      raise UserError('jumps (RePaint resampling) is a non-negative count and '
                      'needs a mask')
    if jumps and capture_every:
      raise UserError('jumps and frame capture cannot be combined')
    if jumps and (sampler or self.config.sampling.sampler) == 'dpm++2m':
      raise UserError('jumps needs a single-step sampler (ddpm or ddim), not '
                      'dpm++2m')
    x_init = m = None
    if init_image is not None:
      if strength is None and mask is None:
        raise UserError('an init image needs a strength (img2img) or a mask '
                        '(inpainting)')
      x_init = self._image(init_image, num, 'the init image')
      if mask is not None:
        m = self._image(mask, num, 'the mask')

    key_args = (num, sampler, num_steps, capture_every, strength, jumps,
                guidance_scale is not None, y is None, m is None,
                tuple(sorted(sampler_kwargs.items())))
    if key_args not in self._cache:
      smp = self.sampler(sampler, num_steps, **sampler_kwargs)
      self._cache[key_args] = make_sample_fn(
          self.setup.apply, smp, (num,) + self.image_shape, self.mesh,
          capture_every, null_label=self.num_classes, strength=strength,
          jumps=jumps)
    scale = None if guidance_scale is None else jnp.float32(guidance_scale)
    x, frames = self._cache[key_args](self.params, jax.random.key(seed), y,
                                      scale, x_init, m)
    x = np.asarray(jax.device_get(x))
    if return_frames:
      return x, (None if frames is None else np.asarray(jax.device_get(frames)))
    return x


def load(workdir: str, step: int | None = None, use_ema: bool = True,
         mesh: Mesh | None = None) -> Pipeline:
  """Restores the checkpoint at `step` (default: latest) of a workdir."""
  ckpt = Checkpointer(workdir, read_only=True)
  step, meta = ckpt.read_meta(step)
  config = config_from_meta(meta)
  setup, target = abstract_state(config)
  mesh = mesh or make_mesh()
  # Not closed on failure: closing Orbax's manager after a failed restore makes
  # its background threads print tracebacks; the manager is dropped instead.
  state = ckpt.restore(step, target, mesh)
  ckpt.close()
  params = state.ema_params if use_ema else state.params
  return Pipeline(config, setup, params, mesh, step)
