"""The workdir lock, the metrics file on resume, and the workdir checks."""

import json
import os
import socket
import subprocess
import sys

import pytest

from ddpm_jax.train import runtime

_HOLD = '''
import sys, time
from ddpm_jax.train.runtime import WorkdirLock, TrainingError
lock = WorkdirLock(sys.argv[1])
try:
  lock.acquire()
except TrainingError as e:
  print('refused', flush=True)
  sys.exit(3)
print('held', flush=True)
time.sleep(float(sys.argv[2]))
'''


def _holder(workdir, seconds):
  return subprocess.Popen([sys.executable, '-c', _HOLD, str(workdir), str(seconds)],
                          stdout=subprocess.PIPE, text=True)


def test_a_live_trainer_blocks_a_second_one(tmp_path):
  holder = _holder(tmp_path, 60)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(runtime.TrainingError, match=f'pid {holder.pid} on host '):
    runtime.WorkdirLock(str(tmp_path)).acquire()
  holder.kill()
  holder.wait()
  lock = runtime.WorkdirLock(str(tmp_path))   # SIGKILL released it
  lock.acquire()
  lock.release()


def test_a_lock_file_with_our_own_pid_and_host_does_not_block(tmp_path):
  """What a container restarted after SIGKILL sees: same host, same pid."""
  (tmp_path / 'train.lock').write_text(f'{os.getpid()} {socket.gethostname()}\n')
  lock = runtime.WorkdirLock(str(tmp_path))
  lock.acquire()
  lock.release()
  (tmp_path / 'train.lock').write_text('123 another-host\n')
  lock.acquire()
  assert (tmp_path / 'train.lock').read_text().split()[0] == str(os.getpid())
  lock.release()


def test_racing_starters_never_both_hold_the_lock(tmp_path):
  (tmp_path / 'train.lock').write_text('999999 stale-host\n')  # a stale lock
  for _ in range(3):
    procs = [_holder(tmp_path, 1.0) for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs).count('held') == 1, outs


def test_metrics_rows_after_the_restored_step_and_torn_lines_are_dropped(tmp_path):
  w = runtime.MetricsWriter(str(tmp_path), enabled=True)
  for s in (1, 2, 3, 4):
    w.write(s, loss=float(s))
  with open(w.path, 'a') as f:
    f.write('{"step": 5, "lo')               # torn by SIGKILL
  w.truncate_after(2)
  w.write(3, loss=30.0)
  rows = [json.loads(l) for l in open(w.path)]
  assert [(r['step'], r['loss']) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('keep')
  with pytest.raises(runtime.TrainingError, match='is not writable'):
    runtime.prepare_workdir(str(blocker / 'sub'))
