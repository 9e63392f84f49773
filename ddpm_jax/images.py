"""Image files: PNG grids and GIF animations of samples, and input images."""

from __future__ import annotations

import math
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddpm_jax.data import to_uint8
from ddpm_jax.errors import UserError
from ddpm_jax import files

# Input images larger than this many pixels are refused before decoding.
MAX_INPUT_PIXELS = 4096 * 4096


def make_grid(x_BHWC, nrow: int | None = None, pad: int = 2) -> np.ndarray:
  """[-1, 1] images → one uint8 grid image [H', W', C]."""
  imgs = to_uint8(x_BHWC)
  B, H, W, C = imgs.shape
  nrow = nrow or math.ceil(math.sqrt(B))
  ncol = math.ceil(B / nrow)
  grid = np.zeros((ncol * (H + pad) + pad, nrow * (W + pad) + pad, C), np.uint8)
  for i, img in enumerate(imgs):
    r, c = divmod(i, nrow)
    y, x = pad + r * (H + pad), pad + c * (W + pad)
    grid[y:y + H, x:x + W] = img
  return grid


def _pil(grid: np.ndarray, scale: int) -> Image.Image:
  img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  return img


def write_grid(x_BHWC, f: BinaryIO, nrow: int | None = None, scale: int = 2) -> None:
  _pil(make_grid(x_BHWC, nrow), scale).save(f, format='PNG')


def write_gif(frames_FBHWC, f: BinaryIO, nrow: int | None = None, scale: int = 2,
              duration_ms: int = 60) -> None:
  """One grid per frame; the last frame is held for a second."""
  pics = [_pil(make_grid(fr, nrow), scale) for fr in frames_FBHWC]
  durations = [duration_ms] * (len(pics) - 1) + [1000]
  pics[0].save(f, format='GIF', save_all=True, append_images=pics[1:],
               duration=durations, loop=0)


def save_grid(x_BHWC, path: str, nrow: int | None = None, scale: int = 2) -> None:
  """`write_grid` into `path` (local or gs://) atomically, creating its folder."""
  files.makedirs(os.path.dirname(files.absolute(path)))
  files.atomic_write(path, lambda f: write_grid(x_BHWC, f, nrow, scale))


def read_image(path: str, channels: int, what: str) -> np.ndarray:
  """A PNG/JPEG as float32 [H, W, C] in [-1, 1]; an unreadable, corrupt or
  huge file is one UserError."""
  if files.isdir(path):
    raise UserError(f'{what} {path} is a directory, not an image file')
  if not files.isfile(path):
    raise UserError(f'{what} {path} does not exist')
  try:
    with files.open_read(path) as f, Image.open(f) as img:
      if img.width * img.height > MAX_INPUT_PIXELS:
        raise UserError(f'{what} {path} is {img.width}x{img.height} pixels, more '
                        'than an input image can be')
      arr = np.asarray(img.convert('L' if channels == 1 else 'RGB'), np.float32)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
          Image.DecompressionBombError) as e:  # what Pillow raises for bad files
    raise UserError(f'{what} {path} is not a readable image: '
                    f'{" ".join(str(e).split())}') from e
  if arr.ndim == 2:
    arr = arr[..., None]
  return arr / 127.5 - 1.0
