"""Atomic file writes: a failure never leaves half a file or replaces a good one."""

from __future__ import annotations

import os
from typing import BinaryIO, Callable


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
  """Calls write(f) on a temporary file beside `path`, then renames it over
  `path`; the temporary file is removed if anything fails."""
  tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f'.{os.path.basename(path)}.tmp')
  try:
    with open(tmp, 'wb') as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
