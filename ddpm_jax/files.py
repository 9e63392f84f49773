"""Every file the project writes or checks, local or in an object store.

A path with a scheme (`gs://bucket/run`, or whatever else `etils.epath`
supports) goes through epath; a local path through `os`. Writes never leave
half a file and never replace a good one: locally a file is written under a
temporary name, fsynced and renamed; in an object store an object appears
only when its upload completes, and it is uploaded only after every writer
of the call has succeeded.
"""

from __future__ import annotations

import io
import os
import posixpath
import tempfile
import time
from typing import BinaryIO, Callable, Sequence

from etils import epath

from ddpm_jax.errors import UserError

Writer = Callable[[BinaryIO], object]


def is_remote(path: str) -> bool:
  """Whether `path` names an object store (it has a scheme: gs://...)."""
  return '://' in str(path)


def join(path: str, *parts: str) -> str:
  return (posixpath.join(str(path), *parts) if is_remote(path)
          else os.path.join(path, *parts))


def absolute(path: str) -> str:
  """A local path made absolute; an object-store path as it is."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return epath.Path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  if is_remote(path):
    p = epath.Path(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def makedirs(path: str) -> None:
  """Creates a folder and its parents (an object store needs none)."""
  if is_remote(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def open_read(path: str) -> BinaryIO:
  """A binary file object of `path` (an object is read into memory)."""
  if is_remote(path):
    return io.BytesIO(epath.Path(path).read_bytes())
  return open(path, 'rb')


def read_bytes(path: str) -> bytes:
  with open_read(path) as f:
    return f.read()


def upload(path: str, data: bytes) -> None:
  """Writes an object whole (an object store's writes are atomic: the
  object appears only when the upload completes)."""
  epath.Path(path).write_bytes(data)


def remove(path: str) -> None:
  if is_remote(path):
    epath.Path(path).unlink()
  else:
    os.remove(path)


def move_tree(src: str, dst: str) -> None:
  """Moves a folder: a rename locally; in an object store each object is
  copied, then the source removed (nothing is removed before every copy
  has succeeded)."""
  if not is_remote(src):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.rename(src, dst)
    return
  root = epath.Path(src)

  def copy(folder: epath.Path) -> None:   # epath refuses `**` on GCS
    for p in folder.iterdir():
      if p.is_dir():
        copy(p)
      else:
        (epath.Path(dst) / p.relative_to(root)).write_bytes(p.read_bytes())
  copy(root)
  root.rmtree()


def require_utf8(path: str, what: str) -> None:
  """Orbax and TensorStore cannot open paths that are not valid UTF-8 (on
  POSIX such bytes arrive as surrogates); refuse them with one line. A gs://
  path also needs epath's Cloud Storage backend (gcsfs, or TensorFlow)."""
  if str(path).startswith('gs://'):
    import importlib.util
    if not any(importlib.util.find_spec(m) for m in ('gcsfs', 'tensorflow')):
      raise UserError(f"{what} {path} is in Cloud Storage, which needs gcsfs: "
                      "pip install -e '.[gcs]' (or pip install gcsfs)")
  try:
    path.encode('utf-8')
  except UnicodeEncodeError:
    raise UserError(f'{what} {path.encode("utf-8", "backslashreplace").decode()} '
                    'is not a valid UTF-8 path') from None


def probe_writable(directory: str) -> None:
  """Creates and removes a unique file in `directory`; raises the OSError if
  that fails. Unlike os.access, this also holds for root and for read-only
  or special file systems; in an object store it proves the bucket takes
  writes."""
  if is_remote(directory):
    p = epath.Path(directory) / f'.write_test_{os.getpid()}_{time.time_ns()}'
    p.write_bytes(b'')
    p.unlink()
    return
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.write_test_')
  os.close(fd)
  os.remove(tmp)


def atomic_write_all(paths: Sequence[str], writers: Sequence[Writer]) -> None:
  """Calls each writer on a fresh temporary file beside its path (a unique
  name, so neither a symlink planted there nor a concurrent writer is
  followed), fsyncs it, and only when every writer has succeeded renames each
  over its path. On failure the temporary files are removed and no path is
  touched. Object-store paths are written into memory first and uploaded
  when every writer has succeeded."""
  tmps: list[str] = []
  uploads: list[tuple[str, bytes]] = []
  try:
    for path, write in zip(paths, writers, strict=True):
      if is_remote(path):
        buf = io.BytesIO()
        write(buf)
        uploads.append((path, buf.getvalue()))
        continue
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                 prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
      tmps.append(tmp)
      with os.fdopen(fd, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    for path, data in uploads:
      upload(path, data)
    for tmp, path in zip(tmps, [p for p in paths if not is_remote(p)]):
      os.replace(tmp, path)
  finally:
    for tmp in tmps:
      if os.path.exists(tmp):
        os.remove(tmp)


def atomic_write(path: str, write: Writer) -> None:
  """`atomic_write_all` of one file."""
  atomic_write_all([path], [write])


class AppendFile:
  """A file that grows by appended records (metrics rows, event records).

  Locally each `append` goes to the end of the file at once. An object
  cannot be appended to: this process's whole content is kept and the
  object rewritten by `flush`, at most every `upload_every_s` seconds unless
  forced (a checkpoint, the end of the run); `initial` is what the object
  held before (kept at its start)."""

  def __init__(self, path: str, upload_every_s: float = 60.0,
               initial: bytes = b''):
    self.path = path
    self.remote = is_remote(path)
    self.upload_every_s = upload_every_s
    self._content = bytearray(initial)
    self._uploaded = len(initial)
    self._last_upload = time.monotonic()

  def append(self, data: bytes) -> None:
    if self.remote:
      self._content += data
      self.flush()
    else:
      with open(self.path, 'ab') as f:
        f.write(data)

  def flush(self, force: bool = False) -> None:
    if not self.remote or len(self._content) == self._uploaded:
      return
    if force or time.monotonic() - self._last_upload >= self.upload_every_s:
      upload(self.path, bytes(self._content))
      self._uploaded = len(self._content)
      self._last_upload = time.monotonic()
