"""Checks of the Python API's arguments at its boundary (`load`,
`Pipeline.sample`, `write_samples`, `evaluate`): each returns the value in
the form the library uses, or raises a one-line `UserError` naming the
argument and what it accepts.

Images and masks follow one contract:
- a PIL image, or a uint8 array: pixel values 0..255, taken to [-1, 1]
  (images) or [0, 1] (masks; 255 = regenerate);
- a float array: already in [-1, 1] (images) or [0, 1] (masks), refused
  outside it;
- shape [H, W], [H, W, C] or [N, H, W, C]; [H, W] is one channel.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import numpy as np

from ddpm_jax.errors import UserError


def _got(value: Any) -> str:
  text = repr(value)
  if len(text) > 60:
    text = text[:57] + '...'
  return f'{text} ({type(value).__name__})'


def integer(name: str, value: Any, *, low: int | None = None,
            high: int | None = None, optional: bool = False) -> int | None:
  """A Python or NumPy integer (not a bool, float or string) in [low, high]."""
  if value is None and optional:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise UserError(f'{name} must be an integer{_range(low, high)}, got {_got(value)}')
  value = int(value)
  if (low is not None and value < low) or (high is not None and value > high):
    raise UserError(f'{name} must be an integer{_range(low, high)}, got {value}')
  return value


def number(name: str, value: Any, *, low: float | None = None,
           high: float | None = None, optional: bool = False) -> float | None:
  """A finite real number (int or float, not a bool or string) in [low, high]."""
  if value is None and optional:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise UserError(f'{name} must be a number{_range(low, high)}, got {_got(value)}')
  value = float(value)
  if not math.isfinite(value) or (low is not None and value < low) or (
      high is not None and value > high):
    raise UserError(f'{name} must be a finite number{_range(low, high)}, got {value}')
  return value


def boolean(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise UserError(f'{name} must be True or False, got {_got(value)}')
  return bool(value)


def choice(name: str, value: Any, allowed: tuple, *, optional: bool = False):
  if value is None and optional:
    return None
  if not isinstance(value, str) or value not in allowed:
    raise UserError(f'{name} must be one of {list(allowed)}, got {_got(value)}')
  return value


def path(name: str, value: Any) -> str:
  """A file system path (str or os.PathLike) as a str."""
  if isinstance(value, os.PathLike):
    value = os.fspath(value)
  if not isinstance(value, str) or not value:
    raise UserError(f'{name} must be a path (str or os.PathLike), got {_got(value)}')
  return value


def _range(low, high) -> str:
  if low is not None and high is not None:
    return f' in [{low}, {high}]'
  if low is not None:
    return f' >= {low}'
  if high is not None:
    return f' <= {high}'
  return ''


def _array(name: str, value: Any, mode: str) -> np.ndarray:
  """A PIL image (converted to `mode`) or anything array-like, as an array."""
  try:
    from PIL import Image
    if isinstance(value, Image.Image):
      return np.asarray(value.convert(mode))
  except ImportError:  # pillow is a dependency; be safe anyway
    pass
  if isinstance(value, (str, bytes, os.PathLike)) or value is None:
    raise UserError(f'{name} must be an image (a PIL image or an array), got '
                    f'{_got(value)}')
  try:
    arr = np.asarray(value)
  except (TypeError, ValueError) as e:
    raise UserError(f'{name} is not an array: {e}') from None
  if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                 or arr.dtype == bool):
    raise UserError(f'{name} must hold numbers, got an array of {arr.dtype}')
  return arr


def _shaped(name: str, arr: np.ndarray) -> np.ndarray:
  if arr.ndim == 2:
    return arr[..., None]
  if arr.ndim not in (3, 4):
    raise UserError(f'{name} must have shape [H, W], [H, W, C] or [N, H, W, C], '
                    f'got shape {tuple(arr.shape)}')
  return arr


def image(name: str, value: Any, channels: int) -> np.ndarray:
  """An input image as float32 in [-1, 1], shape [H, W, C] or [N, H, W, C]."""
  arr = _shaped(name, _array(name, value, 'L' if channels == 1 else 'RGB'))
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(arr.dtype, np.floating):
    raise UserError(f'{name} must be uint8 (0..255) or float in [-1, 1], got '
                    f'{arr.dtype}')
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    raise UserError(f'{name} holds non-finite values')
  lo, hi = float(arr.min()), float(arr.max())
  if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
    raise UserError(f'{name} must lie in [-1, 1] as floats (or be uint8 0..255), '
                    f'got values in [{lo:g}, {hi:g}]')
  return np.clip(arr, -1.0, 1.0)


def mask(name: str, value: Any) -> np.ndarray:
  """An inpainting mask as float32 in [0, 1] (1 = regenerate), shape
  [H, W, C] or [N, H, W, C]."""
  arr = _shaped(name, _array(name, value, 'L'))
  if arr.dtype == bool:
    return arr.astype(np.float32)
  if arr.dtype == np.uint8:
    if arr.max() == 1:
      raise UserError(f'{name} is uint8 with values 0 and 1: a uint8 mask is '
                      '0..255 (255 = regenerate); pass it as bool or float')
    return arr.astype(np.float32) / 255.0
  if not np.issubdtype(arr.dtype, np.floating):
    raise UserError(f'{name} must be bool, uint8 (0..255) or float in [0, 1], '
                    f'got {arr.dtype}')
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    raise UserError(f'{name} holds non-finite values')
  lo, hi = float(arr.min()), float(arr.max())
  if lo < 0.0 or hi > 1.0:
    raise UserError(f'{name} must lie in [0, 1] as floats (or be uint8 0..255), '
                    f'got values in [{lo:g}, {hi:g}]')
  return arr
