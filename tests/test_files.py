"""Atomic writes: unique temporary names, nothing replaced on failure."""

import os

import pytest

from ddpm_jax import files
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
