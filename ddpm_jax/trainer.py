"""The training loop: resume, train, log, sample grids, checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid

import jax
import numpy as np
from tqdm import tqdm

from ddpm_jax import checkpoint as ckpt_lib
from ddpm_jax import config as config_lib
from ddpm_jax import data as data_lib
from ddpm_jax import images as images_lib
from ddpm_jax import training
from ddpm_jax.errors import UserError
from ddpm_jax.pipeline import make_sample_fn, sampler_from_config


class TrainingError(UserError):
  """Training cannot go on; the message is one line for the user."""


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir and proves it writable, or raises one clear line."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{uuid.uuid4().hex}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise TrainingError(f'workdir {workdir} is not writable: '
                        f'{e.strerror or e}') from None


class WorkdirLock:
  """`<workdir>/train.lock` holding "pid host": a second trainer on the same
  workdir refuses to start. A lock whose process is gone (same host) is stale
  and taken over."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'train.lock')
    self.held = False

  def acquire(self) -> None:
    me = f'{os.getpid()} {socket.gethostname()}'
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        if self._stale():
          os.remove(self.path)
          continue
        with open(self.path) as f:
          owner = f.read().strip()
        raise TrainingError(f'another trainer (pid host: {owner}) is using this '
                            f'workdir; stop it or remove {self.path} if it is gone')
      with os.fdopen(fd, 'w') as f:
        f.write(me)
      self.held = True
      return

  def _stale(self) -> bool:
    try:
      with open(self.path) as f:
        pid, host = f.read().split()
      if host != socket.gethostname():
        return False
      os.kill(int(pid), 0)
      return False
    except ProcessLookupError:
      return True
    except (ValueError, OSError):
      return False

  def release(self) -> None:
    if self.held and os.path.exists(self.path):
      os.remove(self.path)
    self.held = False


class Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


class MetricsWriter:
  """Scalars as JSON lines in <workdir>/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled

  def write(self, step: int, **scalars) -> None:
    if self.enabled:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, **scalars}) + '\n')


def train(config, workdir: str, *, progress: bool = True) -> dict:
  """Trains (or resumes) to `config.training.num_steps`; returns a summary."""
  config_lib.validate(config, jax.device_count())
  t_cfg = config.training
  is_main = jax.process_index() == 0
  source = data_lib.load_source(config.data)  # fails before touching the workdir
  prepare_workdir(workdir)

  batches = data_lib.Batches(source, t_cfg.batch_size, config.seed,
                             jax.process_index(), jax.process_count())
  mesh = training.make_mesh()
  setup, state = training.init_model_and_state(config)
  lock = WorkdirLock(workdir)
  if is_main:
    lock.acquire()
  try:
    ckpt = ckpt_lib.Checkpointer(workdir, keep=t_cfg.keep_checkpoints)
    try:
      latest = ckpt.latest_step()
      if latest is not None:
        _, meta = ckpt.read_meta(latest)
        ckpt_lib.check_compatible(config, meta, ckpt.directory)
        state = ckpt.restore(latest, state, mesh)
      else:
        state = training.replicate(state, mesh)
      with Preemption() as preempt:
        return _loop(config, workdir, setup, state, batches, mesh, ckpt,
                     is_main, progress, preempt)
    finally:
      ckpt.wait()
      ckpt.close()
  finally:
    lock.release()


def _loop(config, workdir, setup, state, batches, mesh, ckpt, is_main,
          progress, preempt: Preemption) -> dict:
  t_cfg = config.training
  train_step = training.make_train_step(setup, mesh)
  sampler = sampler_from_config(config)
  d = config.data
  grid_fn = make_sample_fn(
      setup.apply, sampler,
      (t_cfg.num_sample_images, d.image_size, d.image_size, d.channels), mesh,
      null_label=d.num_classes)
  writer = MetricsWriter(workdir, is_main)
  start = int(jax.device_get(state.step))
  if is_main and start:
    print(f'resuming from checkpoint at step {start} in {ckpt.directory}')
  pbar = tqdm(total=t_cfg.num_steps, initial=start, disable=not (progress and is_main),
              dynamic_ncols=True, desc='train')
  losses, skipped, pending = [], 0, None
  last_loss = float('nan')
  t0, t_log = time.time(), time.time()
  steps_in_window = 0

  def resolve(item):
    """Host side of a step: fetched one step late so the device never idles."""
    nonlocal skipped, last_loss
    s, m = item
    m = jax.device_get(m)
    if not m['finite']:
      if t_cfg.nan_policy == 'skip' and skipped < t_cfg.max_skipped_steps:
        skipped += 1
        return
      raise TrainingError(f'non-finite loss or gradient at step {s} (loss='
                          f'{float(m["loss"])}); the last good checkpoint is '
                          f'kept in {ckpt.directory}')
    last_loss = float(m['loss'])
    losses.append((s, last_loss))

  for step in range(start, t_cfg.num_steps):
    batch = training.shard_batch(batches.batch(step), mesh)
    state, metrics = train_step(state, batch)
    if pending is not None:
      resolve(pending)
    pending = (step, metrics)
    steps_in_window += 1
    done = step + 1
    if done % t_cfg.log_every == 0 or done == t_cfg.num_steps:
      resolve(pending)
      pending = None
      now = time.time()
      rate = steps_in_window / max(now - t_log, 1e-9)
      window = [l for _, l in losses[-steps_in_window:]]
      writer.write(done, loss=float(np.mean(window)) if window else float('nan'),
                   steps_per_sec=rate, skipped=skipped, time=now - t0)
      t_log, steps_in_window = now, 0
      pbar.set_postfix(loss=f'{last_loss:.4f}')
    pbar.update(1)
    if done % t_cfg.checkpoint_every == 0 or done == t_cfg.num_steps:
      if pending is not None:
        resolve(pending)
        pending = None
      ckpt.save(state, config, data_step=done)
    if (t_cfg.sample_every and done % t_cfg.sample_every == 0) or done == t_cfg.num_steps:
      _write_grid(grid_fn, state, config, workdir, done, is_main)
    if _should_stop(preempt, done):  # SIGTERM: finish the step, checkpoint, exit 0
      if pending is not None:
        resolve(pending)
        pending = None
      if done % t_cfg.checkpoint_every and done != t_cfg.num_steps:
        ckpt.save(state, config, data_step=done)
      if is_main:
        print(f'\nSIGTERM: saved a checkpoint at step {done}; run the same '
              'command to resume', flush=True)
      break
  pbar.close()
  if pending is not None:
    resolve(pending)
  end = int(jax.device_get(state.step))
  return {'step': end, 'final_loss': last_loss, 'losses': losses,
          'preempted': preempt.requested,
          'num_params': setup.num_params,
          'skipped_steps': skipped, 'wall_time_s': time.time() - t0}


def _should_stop(preempt: Preemption, step: int) -> bool:
  """On several hosts every process must stop at the same step: JAX's
  pre-emption sync point agrees on one; on one host the SIGTERM flag does."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if multihost_utils.reached_preemption_sync_point(step):
      preempt.requested = True
  return preempt.requested


def _gather(x) -> np.ndarray:
  """A batch-sharded global array as one host array on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def maybe_initialize_distributed(coordinator: str | None, num_processes: int | None,
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


def _write_grid(grid_fn, state, config, workdir, step, is_main) -> str:
  """EMA samples; a class-conditional model gets one row per class."""
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  n, nrow = config.training.num_sample_images, None
  if config.model.class_conditional:
    k = config.data.num_classes
    y = np.arange(n, dtype=np.int32) * k // n      # sorted: row r is class r
    nrow = n // k if n % k == 0 else None
    x, _ = grid_fn(state.ema_params, key, y,
                   np.float32(config.sampling.guidance_scale))
  else:
    x, _ = grid_fn(state.ema_params, key)
  x = _gather(x)  # every process takes part in the call
  path = os.path.join(workdir, 'samples', f'step_{step:07d}.png')
  if is_main:
    images_lib.save_grid(x, path, nrow=nrow)
  return path
