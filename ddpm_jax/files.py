"""Atomic file writes: a failure never leaves half a file or replaces a good one."""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Sequence

from ddpm_jax.errors import UserError

Writer = Callable[[BinaryIO], object]


def require_utf8(path: str, what: str) -> None:
  """Orbax and TensorStore cannot open paths that are not valid UTF-8 (on
  POSIX such bytes arrive as surrogates); refuse them with one line."""
  try:
    path.encode('utf-8')
  except UnicodeEncodeError:
    raise UserError(f'{what} {path.encode("utf-8", "backslashreplace").decode()} '
                    'is not a valid UTF-8 path') from None


def probe_writable(directory: str) -> None:
  """Creates and removes a unique file in `directory`; raises the OSError if
  that fails. Unlike os.access, this also holds for root and for read-only
  or special file systems."""
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.write_test_')
  os.close(fd)
  os.remove(tmp)


def atomic_write_all(paths: Sequence[str], writers: Sequence[Writer]) -> None:
  """Calls each writer on a fresh temporary file beside its path (a unique
  name, so neither a symlink planted there nor a concurrent writer is
  followed), fsyncs it, and only when every writer has succeeded renames each
  over its path. On failure the temporary files are removed and no path is
  touched."""
  tmps: list[str] = []
  try:
    for path, write in zip(paths, writers, strict=True):
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                 prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
      tmps.append(tmp)
      with os.fdopen(fd, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    for tmp, path in zip(tmps, paths):
      os.replace(tmp, path)
  finally:
    for tmp in tmps:
      if os.path.exists(tmp):
        os.remove(tmp)


def atomic_write(path: str, write: Writer) -> None:
  """`atomic_write_all` of one file."""
  atomic_write_all([path], [write])
