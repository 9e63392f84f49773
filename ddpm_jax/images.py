"""PNG grids and GIF animations of samples (process 0 writes them)."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from ddpm_jax.data import to_uint8
from ddpm_jax.files import atomic_write


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


def save_grid(x_BHWC, path: str, nrow: int | None = None, scale: int = 2) -> None:
  _atomic_save(_pil(make_grid(x_BHWC, nrow), scale), path, 'PNG')


def save_gif(frames_FBHWC, path: str, nrow: int | None = None, scale: int = 2,
             duration_ms: int = 60) -> None:
  """One grid per frame; the last frame is held for a second."""
  pics = [_pil(make_grid(f, nrow), scale) for f in frames_FBHWC]
  durations = [duration_ms] * (len(pics) - 1) + [1000]
  _atomic_save(pics[0], path, 'GIF', save_all=True, append_images=pics[1:],
               duration=durations, loop=0)


def _atomic_save(img: Image.Image, path: str, fmt: str, **kw) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic_write(path, lambda f: img.save(f, format=fmt, **kw))
