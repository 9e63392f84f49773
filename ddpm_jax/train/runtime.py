"""What a training process needs around the loop: the workdir and its lock,
SIGTERM and SIGINT, the metrics file, and multi-host start-up."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
import uuid

import jax

from ddpm_jax.errors import UserError, describe
from ddpm_jax import files
from ddpm_jax.files import require_utf8


class TrainingError(UserError):
  """Training cannot go on; the message is one line for the user."""


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir and proves it writable, or raises one clear line."""
  require_utf8(workdir, 'workdir')
  try:
    files.makedirs(workdir)
    files.probe_writable(workdir)
  except OSError as e:
    raise TrainingError(f'workdir {workdir} is not writable: '
                        f'{e.strerror or describe(e)}') from e


def workdir_lock(workdir: str) -> 'WorkdirLock | ObjectStoreLock':
  """The lock that keeps a second trainer out of `workdir`."""
  return (ObjectStoreLock(workdir) if files.is_remote(workdir)
          else WorkdirLock(workdir))


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


class ObjectStoreLock:
  """`<workdir>/train.lock` in an object store, where there is no flock: an
  object holding "pid host token unix_time", rewritten every `heartbeat_s`
  by a thread while training and deleted on release. A starter refuses a
  lock of another run written less than `stale_s` ago; an older one is
  taken as left by a run that died (so a run killed without warning blocks
  a restart for at most `stale_s`). Best effort: two starters within the
  same moment can both pass, since epath offers no compare-and-swap; the
  documented rule is one run per workdir (docs/multihost.md).
  """

  def __init__(self, workdir: str, heartbeat_s: float = 20.0,
               stale_s: float = 60.0):
    self.path = files.join(workdir, 'train.lock')
    self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _record(self) -> bytes:
    return (f'{os.getpid()} {socket.gethostname()} {self.token} '
            f'{time.time():.0f}\n').encode()

  def acquire(self) -> None:
    try:
      owner = files.read_bytes(self.path).decode(errors='replace').split()
    except FileNotFoundError:
      owner = []
    if len(owner) == 4 and owner[2] != self.token:
      age = time.time() - float(owner[3]) if owner[3].isdigit() else self.stale_s
      if age < self.stale_s:
        raise TrainingError(
            f'another trainer (pid {owner[0]} on host {owner[1]}) updated '
            f'{self.path} {age:.0f} s ago; stop it first (if it is dead, '
            f'start again in {self.stale_s - age:.0f} s)')
    files.upload(self.path, self._record())
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name='workdir-lock')
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        files.upload(self.path, self._record())
      except OSError:   # the store is unreachable for now: try again later
        pass

  def release(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None
    try:
      owner = files.read_bytes(self.path).decode(errors='replace').split()
      if len(owner) == 4 and owner[2] == self.token:
        files.remove(self.path)
    except OSError:  # unreachable: the lock goes stale by itself
      pass


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
    self.path = files.join(workdir, 'metrics.jsonl')
    self.enabled = enabled
    self.file: files.AppendFile | None = None

  def truncate_after(self, step: int) -> None:
    """Opens the file for this run. On resume from `step`: drops the rows of
    later steps (they will be run again) and a line torn by a hard kill, so
    each step appears once."""
    if not self.enabled:
      return
    keep = b''
    if files.exists(self.path):
      rows = []
      for line in files.read_bytes(self.path).decode(errors='replace').splitlines():
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue  # torn by SIGKILL
        if isinstance(row, dict) and row.get('step', step + 1) <= step:
          rows.append(json.dumps(row) + '\n')
      keep = ''.join(rows).encode()
      files.atomic_write(self.path, lambda f: f.write(keep))
    self.file = files.AppendFile(self.path, initial=keep)

  def write(self, step: int, **scalars) -> None:
    if self.enabled:
      if self.file is None:
        self.file = files.AppendFile(self.path)
      self.file.append((json.dumps({'step': step, **scalars}) + '\n').encode())

  def flush(self) -> None:
    """Uploads what is pending (an object store: at checkpoints and the end)."""
    if self.file is not None:
      self.file.flush(force=True)


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
