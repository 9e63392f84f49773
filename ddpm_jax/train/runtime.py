"""What a training process needs around the loop: the workdir and its lock,
SIGTERM and SIGINT, the metrics file, and multi-host start-up."""

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
      owner = os.read(fd, 256).decode(errors='replace').split()
      os.close(fd)
      who = (f'pid {owner[0]} on host {owner[1]}' if len(owner) == 2
             else 'pid unknown')
      raise TrainingError(f'another trainer ({who}) is using this workdir; '
                          'stop it first') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


# The exit status of a run stopped by a signal (after saving where a step
# had finished): 128 + the signal's number, as shells report it.
EXIT_STATUS = {'SIGINT': 130, 'SIGTERM': 143}


class Preemption:
  """SIGTERM and SIGINT (Ctrl-C) as a flag the loop checks after each step:
  it saves the finished step, releases the workdir and returns, so no
  exception ever unwinds through a compile or a checkpoint write. A second
  SIGINT stops at once, without saving: it raises KeyboardInterrupt, or, in
  a command (`owns_process`), ends the process with status 130 (the kernel
  releases the workdir lock; a half-written checkpoint is never read).

  On one process Python handlers set the flag. On several, the SIGTERM
  handler that `jax.distributed` installs must stay in place: it tells the
  coordination service, and every process then stops at the same step
  through `reached_preemption_sync_point`; SIGINT keeps Python's default
  there (one host cannot stop the others at an agreed step).

  `event` may be one a command set from its own early handler (with the
  signal's name in `event.signal_name`), so a signal during start-up
  (imports, restore, compile) is not lost.
  """

  def __init__(self, event: threading.Event | None = None,
               owns_process: bool = False):
    self.event = event or threading.Event()
    self.owns_process = owns_process
    if not hasattr(self.event, 'signal_name'):
      self.event.signal_name = None
    self._old = {}
    self._multi = jax.process_count() > 1

  @property
  def requested(self) -> bool:
    return self.event.is_set()

  @property
  def signal_name(self) -> str | None:
    return self.event.signal_name

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      signals = ([signal.SIGINT] if self._multi else
                 [signal.SIGTERM, signal.SIGINT])
      for sig in signals:
        handler = (signal.default_int_handler if self._multi else self._handle)
        self._old[sig] = signal.signal(sig, handler)
    return self

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.event.is_set():  # a second Ctrl-C
      if self.owns_process:
        exit_now()
      raise KeyboardInterrupt
    self.event.signal_name = signal.Signals(signum).name
    self.event.set()

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and exit after `step` (the same on every host)."""
    if self._multi:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.event.signal_name = 'SIGTERM'
        self.event.set()
    return self.requested

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def exit_now() -> None:
  """Ends a command's process at once with status 130 and one line: no
  exception unwinds through XLA's or Orbax's threads."""
  os.write(2, b'\nerror: interrupted again; stopped without saving\n')
  os._exit(130)


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
