"""The training loop: resume, train, log, sample grids, checkpoint."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from ddpm_jax import builders
from ddpm_jax import captions as captions_lib
from ddpm_jax import checkpoint as ckpt_lib
from ddpm_jax import config as config_lib
from ddpm_jax import data as data_lib
from ddpm_jax import files
from ddpm_jax import images as images_lib
from ddpm_jax import latent as latent_lib
from ddpm_jax import sampling
from ddpm_jax import sharding
from ddpm_jax import tokenizer
from ddpm_jax.input_pipeline import BatchIterator
from ddpm_jax.train import step as step_lib
from ddpm_jax.train import events as events_lib
from ddpm_jax.train.runtime import (MetricsWriter, Preemption, TrainingError,
                                    prepare_workdir, workdir_lock)


def train(config, workdir: str, *, progress: bool = True,
          stop: threading.Event | None = None,
          profile_steps: tuple[int, int] | None = None) -> dict:
  """Trains (or resumes) to `config.training.num_steps`; returns a summary:
  'step', 'final_loss', 'steps_run', 'preempted' and 'signal' (the name of
  the SIGTERM or SIGINT that stopped the run after saving its last finished
  step, or None), 'num_params', 'skipped_steps', 'wall_time_s'. `stop`: the
  event a command's own early signal handler sets; a command owns its
  process, so a second Ctrl-C then ends it at once (runtime.Preemption).
  `profile_steps` (A, B): a jax.profiler trace of steps A+1..B, into
  <workdir>/plugins/profile for TensorBoard's profile plugin."""
  with Preemption(stop, owns_process=stop is not None) as preempt:
    return _train(config, workdir, progress, preempt, profile_steps)


def _train(config, workdir: str, progress: bool, preempt: Preemption,
           profile_steps: tuple[int, int] | None = None) -> dict:
  config_lib.validate(config, jax.device_count())
  t_cfg = config.training
  is_main = jax.process_index() == 0
  kind = config_lib.model_kind(config)
  own_captions = kind.text and config.data.captions == 'folder'
  source = data_lib.load_source(  # fails before touching the workdir
      config.data, labels=kind.classes, captions=own_captions, seed=config.seed)
  if getattr(source, 'summary', None) is not None and is_main:
    print(source.summary.line(config.data.folder, own_captions), flush=True)
  if len(source) < t_cfg.batch_size:
    raise TrainingError(f'the data has {len(source)} usable images, fewer than '
                        f'one batch of training.batch_size={t_cfg.batch_size}')
  if config.data.name == 'folder':  # what the checkpoint records of a folder
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.folder = os.path.abspath(config.data.folder)  # resumable anywhere
    if source.class_names:
      config.data.num_classes = len(source.class_names)
      config.data.class_names = tuple(source.class_names)
    config_lib.validate(config, jax.device_count())
  mesh = sharding.make_mesh()
  ae_params = None
  if kind.latent:  # the frozen autoencoder, copied in
    config, ae_params = latent_lib.attach_autoencoder(config, mesh)  # one line)
  prepare_workdir(workdir)

  batches = data_lib.Batches(source, t_cfg.batch_size, config.seed,
                             jax.process_index(), jax.process_count(),
                             config.model.text_max_len if own_captions else 0)
  setup, state = step_lib.init_train_state(config, ae_params)
  lock = workdir_lock(workdir)
  if is_main:
    lock.acquire()
  try:
    ckpt = ckpt_lib.Checkpointer(workdir, keep=t_cfg.keep_checkpoints)
    try:
      state = _resume(ckpt, config, state, mesh, is_main)
      return _loop(config, workdir, setup, state, batches, mesh, ckpt,
                   is_main, progress, preempt, source, profile_steps)
    finally:
      ckpt.wait()
      ckpt.close()
  finally:
    lock.release()


# The steps only dispatch work: nothing is pulled from the device but at
# logging, checkpoint and grid steps (`host_transfers`), so the host runs
# ahead of the device (tests/test_train_loop.py measures it). On a GPU or
# TPU, DDPM_JAX_STEP_TRANSFER_GUARD=disallow_explicit makes any other pull
# an error and 'log_explicit' logs them (on the CPU the arrays are already
# in host memory and JAX's guard sees nothing).
STEP_TRANSFER_GUARD = os.environ.get('DDPM_JAX_STEP_TRANSFER_GUARD', 'allow')


def host_transfers():
  """Where the steps may pull values from the device."""
  return jax.transfer_guard_device_to_host('allow')


def _resume(ckpt, config, state, mesh, is_main: bool):
  """The newest readable checkpoint's state (or `state`, replicated, when
  there is none). A damaged step is set aside in one line, never deleted,
  and the one before it is tried."""
  while (latest := ckpt.latest_step()) is not None:
    try:
      _, meta = ckpt.read_meta(latest)
      config_lib.check_compatible(
          config, config_lib.config_from_dict(meta['config']), ckpt.directory)
      return step_lib.TrainState.from_saveable(
          ckpt.restore(latest, state.to_saveable(), mesh))
    except ckpt_lib.DamagedCheckpoint as e:
      where = ckpt.set_aside(latest) if is_main else None
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f'set aside {latest}')
        ckpt.manager.reload()
      if is_main:
        print(f'warning: {e}; moved it to {where} and going back to the '
              'checkpoint before it', file=sys.stderr, flush=True)
  return sharding.replicate(state, mesh)


_WINDOW_KEYS = ('steps', 'bad', 'first_bad', 'last_bad', 'bad_loss', 'last_loss')


@jax.jit
def _zero_window(m):
  z = {k: jnp.zeros((), jnp.float32) for k in m if k != 'finite'}
  return {**z, 'steps': jnp.zeros((), jnp.int32), 'bad': jnp.zeros((), jnp.int32),
          'first_bad': jnp.full((), -1, jnp.int32),
          'last_bad': jnp.full((), -1, jnp.int32),
          'bad_loss': jnp.zeros((), jnp.float32),
          'last_loss': jnp.full((), jnp.nan, jnp.float32)}


@jax.jit
def _fold(window, m, step):
  """Adds one step's metrics to the window, on the device: sums of the
  finite steps' values, and where the non-finite steps were."""
  ok = m['finite'] > 0
  out = {k: window[k] + jnp.where(ok, m[k].astype(jnp.float32), 0.0)
         for k in m if k != 'finite'}
  first = ~ok & (window['first_bad'] < 0)
  return {**out, 'steps': window['steps'] + 1,
          'bad': window['bad'] + (~ok).astype(jnp.int32),
          'first_bad': jnp.where(first, step, window['first_bad']),
          'last_bad': jnp.where(ok, window['last_bad'], step),
          'bad_loss': jnp.where(first, m['loss'].astype(jnp.float32),
                                window['bad_loss']),
          'last_loss': jnp.where(ok, m['loss'].astype(jnp.float32),
                                 window['last_loss'])}


class _Window:
  """The steps' metrics, summed on the device and pulled to the host only by
  `fetch` (at logging, checkpoint and grid steps), which applies the NaN
  policy: a non-finite step changed nothing (train_step keeps the old
  state), so finding it a few steps late is safe. `take_means` gives the
  means of the finite steps since it was last called."""

  def __init__(self, t_cfg, directory: str):
    self.t_cfg, self.directory = t_cfg, directory
    self.window = None
    self.sums: dict[str, float] = {}
    self.finite_steps = 0
    self.skipped = 0
    self.last_loss = float('nan')

  def add(self, step: int, metrics) -> None:
    if self.window is None:
      self.window = _zero_window(metrics)
    self.window = _fold(self.window, metrics, step)

  def fetch(self) -> None:
    if self.window is None:
      return
    w = jax.device_get(self.window)
    self.window = None
    bad = int(w['bad'])
    if bad:
      t = self.t_cfg
      if t.nan_policy == 'skip' and self.skipped + bad <= t.max_skipped_steps:
        self.skipped += bad
      else:
        s = int(w['first_bad'] if t.nan_policy != 'skip' else w['last_bad'])
        raise TrainingError(f'non-finite loss, gradient or update at step {s} '
                            f'(loss={float(w["bad_loss"])}); the last good '
                            f'checkpoint is kept in {self.directory}')
    n = int(w['steps']) - bad
    if n:
      self.last_loss = float(w['last_loss'])
    self.finite_steps += n
    for k, v in w.items():
      if k not in _WINDOW_KEYS:
        self.sums[k] = self.sums.get(k, 0.0) + float(v)

  def take_means(self) -> dict[str, float]:
    n = self.finite_steps
    means = {k: v / n if n else float('nan') for k, v in self.sums.items()}
    self.sums, self.finite_steps = {}, 0
    return means


def _loop(config, workdir, setup, state, batches, mesh, ckpt, is_main,
          progress, preempt: Preemption, source, profile_steps=None) -> dict:
  t_cfg = config.training
  kind = config_lib.model_kind(config)
  train_step = step_lib.make_train_step(setup, mesh)
  learning_rate = step_lib.learning_rate_schedule(t_cfg)
  grid = (None if not t_cfg.num_sample_images
          else _ReconstructionGrid(setup, source, mesh)
          if kind.autoencoder else _SampleGrid(setup, mesh, source))
  writer = MetricsWriter(workdir, is_main)
  events = events_lib.EventWriter(workdir, is_main)
  start = int(jax.device_get(state.step))
  t0 = t_log = time.time()
  if preempt.should_stop(start):  # a signal while starting: nothing to save
    return {'step': start, 'final_loss': float('nan'), 'steps_run': 0,
            'preempted': True, 'signal': preempt.signal_name,
            'num_params': setup.num_params, 'skipped_steps': 0, 'wall_time_s': 0.0}
  writer.truncate_after(start)
  events.truncate_after(start)
  if is_main and ckpt.latest_step() is not None:   # step 0: an imported model
    print(f'resuming from checkpoint at step {start} in {ckpt.directory}')
  pbar = tqdm(total=t_cfg.num_steps, initial=start, disable=not (progress and is_main),
              dynamic_ncols=True, desc='train')
  # The next batches are decoded (in grain workers) while the device computes.
  with BatchIterator(batches, start, t_cfg.num_steps, config.data.workers) as inputs:
    window = _Window(t_cfg, ckpt.directory)
    steps_in_window = 0

    def save(done: int) -> None:
      with host_transfers():
        window.fetch()  # a non-finite step stops here, before it is saved
        meta = {'config': json.loads(config.to_json())}
        if kind.autoencoder:  # every autoencoder checkpoint can serve
          meta['latent_scale'] = latent_lib.latent_scale(
              setup.ae.encode, state.ema_params, source, config)
        ckpt.save(done, state.to_saveable(), meta)
      writer.flush()
      events.flush()

    tracing = False
    try:
      with jax.transfer_guard_device_to_host(STEP_TRANSFER_GUARD):
        for step in range(start, t_cfg.num_steps):
          if profile_steps and step == profile_steps[0]:
            jax.profiler.start_trace(workdir)
            tracing = True
          batch = sharding.shard_batch(next(inputs), mesh)
          state, metrics = train_step(state, batch)
          window.add(step, metrics)
          steps_in_window += 1
          done = step + 1
          last = done == t_cfg.num_steps
          if done % t_cfg.log_every == 0 or last:
            with host_transfers():
              window.fetch()
              lr = float(learning_rate(done))
            now = time.time()
            rate = steps_in_window / max(now - t_log, 1e-9)
            means = window.take_means()
            loss = means.pop('loss', float('nan'))
            extra = {k: means[k] for k in sorted(means)}   # grad_norm, AE terms
            writer.write(done, loss=loss, steps_per_sec=rate,
                         skipped=window.skipped, time=now - t0, learning_rate=lr,
                         images_per_sec=rate * t_cfg.batch_size, **extra)
            events.scalars(done, loss=loss, learning_rate=lr,
                           skipped_steps=window.skipped, steps_per_sec=rate,
                           images_per_sec=rate * t_cfg.batch_size, **extra)
            t_log, steps_in_window = now, 0
            pbar.set_postfix(loss=f'{window.last_loss:.4f}')
          pbar.update(1)
          if tracing and done == profile_steps[1]:
            with host_transfers():
              jax.block_until_ready(state)
            jax.profiler.stop_trace()
            tracing = False
          stop = preempt.should_stop(done)
          if done % t_cfg.checkpoint_every == 0 or last or stop:
            save(done)
          if stop:  # a signal: the step is finished and saved
            break
          if grid is not None and (
              (t_cfg.sample_every and done % t_cfg.sample_every == 0) or last):
            with host_transfers():
              x, nrow = grid(state, done)
            if is_main:
              images_lib.save_grid(x, files.join(workdir, 'samples',
                                                 f'step_{done:07d}.png'), nrow=nrow)
              events.image(done, 'reconstructions' if kind.autoencoder else 'samples',
                           images_lib.make_grid(x, nrow))
      pbar.close()
      with host_transfers():
        window.fetch()
        step = int(jax.device_get(state.step))
    finally:
      if tracing:   # stopped before step B: keep what was traced
        jax.profiler.stop_trace()
      writer.flush()
      events.flush()
    return {'step': step, 'final_loss': window.last_loss,
            'steps_run': step - start, 'preempted': preempt.requested,
            'signal': preempt.signal_name, 'num_params': setup.num_params,
            'skipped_steps': window.skipped, 'wall_time_s': time.time() - t0}


class _SampleGrid:
  """EMA samples (a latent model's decoded); a class-conditional or text
  model gets one row per class (`grid_condition`)."""

  def __init__(self, setup, mesh, source):
    config = self.config = setup.config
    n = config.training.num_sample_images
    codec, apply = None, setup.eps_apply
    self.latent = config_lib.model_kind(config).latent
    if self.latent:
      codec = latent_lib.make_codec(config)
      apply = latent_lib.unet_apply(setup.eps_apply)
    self.fn = sampling.make_sample_fn(
        apply, builders.sampler_from_config(config),
        (n,) + config_lib.unet_input_shape(config), mesh,
        null_label=config.data.num_classes, codec=codec)
    self.y = grid_condition(config, n, source)   # fixed: built once
    self.y_null = builders.null_condition(config, n)

  def __call__(self, state, step: int):
    config = self.config
    key = jax.random.fold_in(sampling.seed_key(config.seed), step)
    params = (latent_lib.joint_params(state.ema_params, state.autoencoder)
              if self.latent else state.ema_params)
    n, nrow = config.training.num_sample_images, None
    if self.y is not None:
      k = config.data.num_classes
      nrow = n // k if n % k == 0 else None
      x, _ = self.fn(params, key, self.y,
                     np.float32(config.sampling.guidance_scale),
                     y_null=self.y_null)
    else:
      x, _ = self.fn(params, key)
    return sharding.gather(x), nrow  # every process takes part in the call


def grid_condition(config, n: int, source=None) -> np.ndarray | None:
  """The training grid's condition, sorted so that row r is class r: the
  labels, or a text model's captions "a seven" / "un siete" in turn; a model
  of a folder's own captions: those of n images spread over the folder."""
  k = config.data.num_classes
  label = np.arange(n, dtype=np.int32) * k // n
  kind = config_lib.model_kind(config)
  if kind.text and config.data.captions == 'folder':
    idx = np.linspace(0, len(source) - 1, n).astype(np.int64)
    return tokenizer.tokenize_all(source.texts(idx), config.model.text_max_len)
  if kind.text:
    prompts = [captions_lib.captions(config.data.captions, int(c),
                                     captions_lib.LANGUAGES[i % 2])[0]
               for i, c in enumerate(label)]
    return tokenizer.tokenize_all(prompts, config.model.text_max_len)
  if kind.classes:
    return label
  return None


class _ReconstructionGrid:
  """The autoencoder's grid: rows of training images, each above its
  reconstruction (the EMA encoder's posterior mean, decoded)."""

  def __init__(self, setup, source, mesh):
    config = setup.config
    n = max(1, config.training.num_sample_images // 2)
    self.nrow = min(n, 10)
    n -= n % self.nrow
    n = min(n, len(source))   # spread over the set (MNIST-5k is sorted by class)
    images, _ = source.read(np.linspace(0, len(source) - 1, n).astype(np.int64))
    self.x = data_lib.preprocess(jax.numpy.asarray(images), config.data.image_size,
                                 False, None, config.data.resize)
    self.fn = jax.jit(setup.ae.reconstruct)

  def __call__(self, state, step: int):
    rec = np.asarray(self.fn(state.ema_params, self.x))
    x = np.asarray(self.x)
    rows = [np.concatenate([x[i:i + self.nrow], rec[i:i + self.nrow]])
            for i in range(0, len(x), self.nrow)]
    return np.concatenate(rows), self.nrow
