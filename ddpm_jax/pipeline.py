"""The public API: restore a checkpoint and sample from it.

    from ddpm_jax import load
    pipe = load('workdirs/mnist')            # EMA weights of the latest step
    images = pipe.sample(num=16, seed=0)     # float32 [16, 28, 28, 1] in [-1, 1]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import samplers as samplers_lib
from ddpm_jax.checkpoint import Checkpointer, config_from_meta
from ddpm_jax.training import (Setup, abstract_state, betas_from_config,
                               make_mesh)


def make_sample_fn(apply: Callable, sampler: samplers_lib.Sampler,
                   shape: tuple[int, ...], mesh: Mesh | None = None,
                   capture_every: int = 0) -> Callable:
  """jit(fn)(params, key) -> (x0, frames): the whole reverse process as one
  scan. x_T is drawn inside from the key, so only the key changes per call."""
  batch_spec = None
  if mesh is not None and shape[0] % mesh.size == 0:
    batch_spec = NamedSharding(mesh, P('data'))

  def fn(params, key):
    init_key, loop_key = jax.random.split(key)
    x_T = jax.random.normal(init_key, shape, jnp.float32)
    if batch_spec is not None:
      x_T = jax.lax.with_sharding_constraint(x_T, batch_spec)
    eps_fn = lambda x, t: apply(params, x, t)
    return sampler.sample(eps_fn, loop_key, x_T, capture_every=capture_every)
  return jax.jit(fn)


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

  def sampler(self, name: str | None = None, num_steps: int | None = None,
              **kwargs) -> samplers_lib.Sampler:
    s = self.config.sampling
    name = name or s.sampler
    num_steps = num_steps or s.num_steps or None
    if name == 'ddpm':
      kwargs.setdefault('var_type', s.var_type)
    kwargs.setdefault('clip_x0', s.clip_x0)
    kwargs.setdefault('spacing', s.spacing)
    return samplers_lib.make_sampler(name, betas_from_config(self.config),
                                     num_steps, **kwargs)

  def sample(self, num: int = 16, seed: int = 0, *, sampler: str | None = None,
             num_steps: int | None = None, capture_every: int = 0,
             return_frames: bool = False, **sampler_kwargs):
    """Samples `num` images in [-1, 1] (float32 NumPy, NHWC)."""
    key_args = (num, sampler, num_steps, capture_every,
                tuple(sorted(sampler_kwargs.items())))
    if key_args not in self._cache:
      smp = self.sampler(sampler, num_steps, **sampler_kwargs)
      self._cache[key_args] = make_sample_fn(
          self.setup.apply, smp, (num,) + self.image_shape, self.mesh,
          capture_every)
    x, frames = self._cache[key_args](self.params, jax.random.key(seed))
    x = np.asarray(jax.device_get(x))
    if return_frames:
      return x, (None if frames is None else np.asarray(jax.device_get(frames)))
    return x


def load(workdir: str, step: int | None = None, use_ema: bool = True,
         mesh: Mesh | None = None) -> Pipeline:
  """Restores the checkpoint at `step` (default: latest) of a workdir."""
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    step, meta = ckpt.read_meta(step)
    config = config_from_meta(meta)
    setup, target = abstract_state(config)
    mesh = mesh or make_mesh()
    state = ckpt.restore(step, target, mesh)
  finally:
    ckpt.close()
  params = state.ema_params if use_ema else state.params
  return Pipeline(config, setup, params, mesh, step)
