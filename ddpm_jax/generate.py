"""What sample.py does, as a testable function: restore, sample, write files."""

from __future__ import annotations

import os

import numpy as np

from ddpm_jax import images as images_lib
from ddpm_jax.errors import UserError
from ddpm_jax.pipeline import load


def _check_writable(path: str) -> None:
  d = os.path.dirname(os.path.abspath(path)) or '.'
  if not os.path.isdir(d):
    raise UserError(f'output directory {d} does not exist')
  if not os.access(d, os.W_OK):
    raise UserError(f'output directory {d} is not writable')


def generate(workdir: str, *, out: str = 'samples.png', num: int = 64,
             seed: int = 0, checkpoint: int | None = None, use_ema: bool = True,
             gif: bool = False, sampler: str | None = None,
             num_steps: int | None = None) -> dict[str, str]:
  """Samples `num` images; writes <out> (PNG grid), <stem>.npy and, with
  `gif`, <stem>.gif of the reverse process. Returns the written paths."""
  if num <= 0:
    raise UserError(f'--num must be positive, got {num}')
  if not out.lower().endswith('.png'):
    raise UserError(f'--out must end in .png, got {out}')
  if not os.path.isdir(workdir):
    raise UserError(f'workdir {workdir} does not exist')
  _check_writable(out)
  pipe = load(workdir, step=checkpoint, use_ema=use_ema)
  T = pipe.config.diffusion.num_timesteps
  if num_steps is not None and not 1 <= num_steps <= T:
    raise UserError(f'--steps must be in [1, {T}], got {num_steps}')
  steps = num_steps or pipe.config.sampling.num_steps or T
  capture = max(1, steps // 50) if gif else 0
  x, frames = pipe.sample(num, seed, sampler=sampler, num_steps=num_steps,
                          capture_every=capture, return_frames=True)
  stem = os.path.splitext(out)[0]
  paths = {'png': out, 'npy': stem + '.npy'}
  images_lib.save_grid(x, out)
  tmp = stem + '.tmp.npy'
  np.save(tmp, x)
  os.replace(tmp, paths['npy'])
  if gif:
    paths['gif'] = stem + '.gif'
    images_lib.save_gif(frames, paths['gif'])
  return paths
