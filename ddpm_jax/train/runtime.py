"""What a training process needs around the loop: the workdir and its lock,
SIGTERM, the metrics file, and multi-host start-up."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import uuid

import jax

from ddpm_jax.errors import UserError
from ddpm_jax.files import probe_writable, require_utf8


class TrainingError(UserError):
  """Training cannot go on; the message is one line for the user."""


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir and proves it writable, or raises one clear line."""
  require_utf8(workdir, 'workdir')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe_writable(workdir)
  except OSError as e:
    raise TrainingError(f'workdir {workdir} is not writable: '
                        f'{e.strerror or e}') from e


class WorkdirLock:
  """An exclusive `flock` on `<workdir>/train.lock`, held while training.

  The kernel drops the lock when its process dies, however it dies, so a
  lock left by a dead trainer never blocks a restart (even one with the same
  pid and host, as in a restarted container), and two live trainers can never
  both hold it. The file is never deleted; it holds "pid host" of the last
  owner, for the error message only.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'train.lock')
    self._fd: int | None = None

  def acquire(self) -> None:
    fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.read(fd, 256).decode(errors='replace').strip() or '?'
      os.close(fd)
      raise TrainingError(f'another trainer (pid host: {owner}) is using this '
                          'workdir; stop it first') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


class Preemption:
  """SIGTERM as a flag the loop checks after each step.

  On one process a Python handler sets the flag. On several, the handler
  that `jax.distributed` installs must stay in place: it tells the
  coordination service, and every process then stops at the same step
  through `reached_preemption_sync_point`.

  `event` may be one a command set from its own early handler, so a SIGTERM
  during start-up (imports, restore, compile) is not lost.
  """

  def __init__(self, event: threading.Event | None = None):
    self.event = event or threading.Event()
    self._old = None
    self._multi = jax.process_count() > 1

  @property
  def requested(self) -> bool:
    return self.event.is_set()

  def __enter__(self):
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.event.set()

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and exit after `step` (the same on every host)."""
    if self._multi:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.event.set()
    return self.requested

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


class MetricsWriter:
  """Scalars as JSON lines in <workdir>/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled

  def truncate_after(self, step: int) -> None:
    """On resume from `step`: drops the rows of later steps (they will be run
    again) and a line torn by a hard kill, so each step appears once."""
    if not (self.enabled and os.path.exists(self.path)):
      return
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue  # torn by SIGKILL
        if isinstance(row, dict) and row.get('step', step + 1) <= step:
          keep.append(json.dumps(row) + '\n')
    tmp = f'{self.path}.{uuid.uuid4().hex}.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)

  def write(self, step: int, **scalars) -> None:
    if self.enabled:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, **scalars}) + '\n')


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None, auto: bool) -> None:
  """jax.distributed.initialize from explicit flags, or auto-detected
  (TPU pods, SLURM) with `auto`. Must run before any other JAX call."""
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise TrainingError('--coordinator, --num_processes and --process_id go '
                          'together')
    if not 0 <= process_id < num_processes:
      raise TrainingError(f'--process_id={process_id} is not in [0, '
                          f'{num_processes})')
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif auto:
    jax.distributed.initialize()
