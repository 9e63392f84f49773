"""Atomic writes: unique temporary names, nothing replaced on failure."""

import os

import pytest

from ddpm_jax import files
from ddpm_jax.errors import UserError
from ddpm_jax.files import atomic_write, atomic_write_all


def test_a_planted_symlink_at_the_old_temp_name_is_not_followed(tmp_path):
  victim = tmp_path / 'victim'
  victim.write_text('keep')
  os.symlink(victim, tmp_path / '.out.png.tmp')   # the old fixed temp name
  atomic_write(str(tmp_path / 'out.png'), lambda f: f.write(b'new'))
  assert victim.read_text() == 'keep'
  assert (tmp_path / 'out.png').read_bytes() == b'new'


def test_a_failing_writer_replaces_nothing_and_leaves_no_temp_file(tmp_path):
  a, b = tmp_path / 'a.png', tmp_path / 'b.npy'
  a.write_bytes(b'old a')
  b.write_bytes(b'old b')

  def boom(f):
    f.write(b'half')
    raise OSError('disk full')
  with pytest.raises(OSError, match='disk full'):
    atomic_write_all([str(a), str(b)], [lambda f: f.write(b'new a'), boom])
  assert a.read_bytes() == b'old a' and b.read_bytes() == b'old b'
  assert sorted(os.listdir(tmp_path)) == ['a.png', 'b.npy']


def test_probe_writable_creates_nothing_and_fails_where_files_cannot_be_made(tmp_path):
  files.probe_writable(str(tmp_path))
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(OSError):   # /proc refuses new files, even to root
    files.probe_writable('/proc')


def test_object_store_paths_and_their_backend(tmp_path, monkeypatch):
  assert files.is_remote('gs://b/x') and not files.is_remote(str(tmp_path))
  assert files.join('gs://b/run', 'checkpoints') == 'gs://b/run/checkpoints'
  assert files.absolute('gs://b/run') == 'gs://b/run'
  files.require_utf8('gs://b/run', 'workdir')   # gcsfs is installed for the tests
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name in ('gcsfs', 'tensorflow') else real(name, *a))
  with pytest.raises(UserError, match=r"workdir gs://b/run is in Cloud Storage, which "
                     r"needs gcsfs: pip install -e '.\[gcs\]'"):
    files.require_utf8('gs://b/run', 'workdir')


def test_append_file_appends_locally_and_rewrites_an_object_whole(tmp_path, monkeypatch):
  local = files.AppendFile(str(tmp_path / 'm.jsonl'))
  local.append(b'a\n')
  local.append(b'b\n')
  assert (tmp_path / 'm.jsonl').read_bytes() == b'a\n'b'b\n'
  uploads = []
  from etils import epath
  monkeypatch.setattr(epath.Path, 'write_bytes', lambda self, data: uploads.append((str(self), data)))
  remote = files.AppendFile('gs://b/m.jsonl', upload_every_s=3600, initial=b'old\n')
  remote.append(b'x\n')          # within the upload interval: kept
  assert uploads == []
  remote.flush(force=True)       # a checkpoint or the end: the whole object
  remote.flush(force=True)       # nothing new: no upload
  assert uploads == [('gs://b/m.jsonl', b'old\nx\n')]
