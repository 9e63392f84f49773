"""What sample.py does, as a testable function: restore, sample, write files."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddpm_jax import images as images_lib
from ddpm_jax.errors import UserError
from ddpm_jax.files import atomic_write
from ddpm_jax.pipeline import load


def _check_writable(path: str) -> None:
  d = os.path.dirname(os.path.abspath(path)) or '.'
  if not os.path.isdir(d):
    raise UserError(f'output directory {d} does not exist')
  if not os.access(d, os.W_OK):
    raise UserError(f'output directory {d} is not writable')


def read_image(path: str, channels: int, what: str) -> np.ndarray:
  """A PNG/JPEG as float32 [H, W, C] in [-1, 1]."""
  if not os.path.isfile(path):
    raise UserError(f'{what} {path} does not exist')
  try:
    with Image.open(path) as img:
      arr = np.asarray(img.convert('L' if channels == 1 else 'RGB'), np.float32)
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f'{what} {path} is not a readable image: {e}') from None
  if arr.ndim == 2:
    arr = arr[..., None]
  return arr / 127.5 - 1.0


def parse_labels(labels: Sequence[str] | None) -> list[int] | None:
  if not labels:
    return None
  try:
    return [int(v) for v in labels]
  except ValueError:
    raise UserError(f'--label takes integers, got {",".join(labels)}') from None


def generate(workdir: str, *, out: str = 'samples.png', num: int = 64,
             seed: int = 0, checkpoint: int | None = None, use_ema: bool = True,
             gif: bool = False, sampler: str | None = None,
             num_steps: int | None = None, eta: float | None = None,
             clip_x0: bool | None = None, spacing: str | None = None,
             labels: Sequence[int] | None = None,
             guidance_scale: float | None = None, init_image: str | None = None,
             strength: float | None = None, mask: str | None = None,
             jumps: int = 0) -> dict[str, str]:
  """Samples `num` images; writes <out> (PNG grid), <stem>.npy and, with
  `gif`, <stem>.gif of the reverse process. Returns the written paths.
  Every check runs before anything is written."""
  if num <= 0:
    raise UserError(f'--num must be positive, got {num}')
  if not out.lower().endswith('.png'):
    raise UserError(f'--out must end in .png, got {out}')
  if strength is not None and not 0.0 <= strength <= 1.0:
    raise UserError(f'--strength must be in [0, 1], got {strength}')
  if not os.path.isdir(workdir):
    raise UserError(f'workdir {workdir} does not exist')
  _check_writable(out)
  pipe = load(workdir, step=checkpoint, use_ema=use_ema)
  c = pipe.config.data.channels
  x_init = read_image(init_image, c, '--init-image') if init_image else None
  m = None
  if mask:
    m = (read_image(mask, 1, '--mask') > 0.0).astype(np.float32)
    if x_init is not None and m.shape[:2] != x_init.shape[:2]:
      raise UserError(f'--mask is {m.shape[1]}x{m.shape[0]} but --init-image is '
                      f'{x_init.shape[1]}x{x_init.shape[0]}')
    m = np.broadcast_to(m, m.shape[:2] + (c,))
  kwargs = {k: v for k, v in dict(eta=eta, clip_x0=clip_x0, spacing=spacing).items()
            if v is not None}
  name = sampler or pipe.config.sampling.sampler
  if 'eta' in kwargs and name != 'ddim':
    raise UserError(f'--eta applies to the ddim sampler, not {name}')
  T = pipe.config.diffusion.num_timesteps
  steps = num_steps or pipe.config.sampling.num_steps or T
  capture = max(1, steps // 50) if gif else 0
  x, frames = pipe.sample(num, seed, sampler=sampler, num_steps=num_steps,
                          labels=labels, guidance_scale=guidance_scale,
                          init_image=x_init, strength=strength, mask=m,
                          jumps=jumps,
                          capture_every=capture, return_frames=True, **kwargs)
  stem = os.path.splitext(out)[0]
  paths = {'png': out, 'npy': stem + '.npy'}
  nrow = None
  if labels is not None and num % len(labels) == 0 and len(labels) > 1:
    nrow = num // len(labels)  # one row per requested label
  images_lib.save_grid(x, out, nrow=nrow)
  atomic_write(paths['npy'], lambda f: np.save(f, x))
  if gif:
    paths['gif'] = stem + '.gif'
    images_lib.save_gif(frames, paths['gif'], nrow=nrow)
  return paths
