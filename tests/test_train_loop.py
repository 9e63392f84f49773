"""The training loop's guards: NaN stop/skip, the workdir lock, SIGTERM and
Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from ddpm_jax.train import loop, runtime
from ddpm_jax.pipeline import load




def test_sigterm_checkpoints_and_exits_143_then_resumes(tmp_path):
  wd = tmp_path / 'wd'
  args = [sys.executable, os.path.join(REPO, 'train.py'),
          f'--config={os.path.join(REPO, "configs", "tiny.py")}', f'--workdir={wd}',
          '--config.training.num_steps=100000', '--config.training.checkpoint_every=100000',
          '--config.training.log_every=1']
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = wd / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and
                                        len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 143, err
  steps = [int(s) for s in os.listdir(wd / 'checkpoints')]
  assert len(steps) == 1 and steps[0] >= 3
  assert out.strip().endswith(f'stopped by SIGTERM: saved the checkpoint of step '
                              f'{steps[0]}; run the same command to resume')
  # Without --config: the run's own config (tiny.py, not the default
  # mnist.py), with the override checked against it.
  r = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'),
                      f'--workdir={wd}', f'--config.training.num_steps={steps[0] + 2}'],
                     capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr
  assert f'resuming from checkpoint at step {steps[0]}' in r.stdout
  assert f'done: step {steps[0] + 2}' in r.stdout
  r = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'),
                      f'--workdir={wd}', '--config.training.batch_size=16'],
                     capture_output=True, text=True, timeout=240)
  assert r.returncode == 2 and 'training.batch_size is 8 in the checkpoint' in r.stderr
  r = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'),
                      f'--workdir={wd}', '--config.training.grad_accum_steps=2'],
                     capture_output=True, text=True, timeout=240)
  assert r.returncode == 2, r.stderr
  assert 'training.grad_accum_steps is 1 in the checkpoint but 2 now' in r.stderr


def _interrupt(args, when=None, *, signals=(signal.SIGINT,), wait_for=None):
  """Starts train.py, waits `when` seconds or until `wait_for(proc)` holds,
  sends `signals` one second apart; returns (returncode, stdout, stderr)."""
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  while time.time() - t0 < 240 and not (wait_for(proc) if wait_for else
                                        time.time() - t0 >= when):
    time.sleep(0.1)
  for i, sig in enumerate(signals):
    if i:
      time.sleep(1.0)
    proc.send_signal(sig)
  out, err = proc.communicate(timeout=240)
  return proc.returncode, out, err


def _saved_steps(wd) -> list[int]:
  d = wd / 'checkpoints'
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if d.exists() else []


def _lock_is_free(wd) -> bool:
  import fcntl
  fd = os.open(wd / 'train.lock', os.O_RDWR)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  finally:
    os.close(fd)


def test_ctrl_c_in_every_phase_saves_what_finished_and_exits_130(tmp_path):
  """SIGINT while starting (imports, restore, compile), while steps, grids
  and checkpoint writes run, and twice (stop now): exit 130, one line, the
  lock released, no crash; a step that finished is saved."""
  wd = tmp_path / 'wd'
  args = [sys.executable, os.path.join(REPO, 'train.py'),
          f'--config={os.path.join(REPO, "configs", "tiny.py")}', f'--workdir={wd}',
          '--config.training.num_steps=100000', '--config.training.log_every=1',
          '--config.training.checkpoint_every=2', '--config.training.sample_every=3',
          '--config.training.num_sample_images=4']
  metrics = wd / 'metrics.jsonl'

  def holds_lock(proc):   # started: past imports and flag parsing
    lock = wd / 'train.lock'
    return lock.exists() and lock.read_text().split()[:1] == [str(proc.pid)]

  def trained(n):         # n rows logged by this process (it rewrites the file)
    def ready(proc):
      if not (holds_lock(proc) and metrics.exists()):
        return False
      rows = [json.loads(l) for l in metrics.read_text().splitlines()]
      done = max(_saved_steps(wd), default=0)
      return sum(r['step'] > done for r in rows) >= n
    return ready

  cases = [dict(when=3.0),                                  # imports
           dict(wait_for=holds_lock),                       # restore, compile
           dict(wait_for=trained(4)),                       # steps, grids, saves
           dict(wait_for=trained(2),                        # stop now
                signals=(signal.SIGINT, signal.SIGINT))]
  for case in cases:
    before = _saved_steps(wd)
    rc, out, err = _interrupt(args, **case)
    assert rc == 130, (case, out, err[-2000:])
    assert 'Segmentation' not in err and 'Traceback' not in err, err[-2000:]
    lines = [l for l in out.splitlines() if l.startswith(('stopped', 'error'))] + [
        l for l in err.splitlines() if l.startswith('error')]
    assert len(lines) == 1, (out, err[-2000:])
    if lines[0].startswith('stopped by SIGINT: saved the checkpoint of step'):
      step = int(lines[0].split('step ')[1].split(';')[0])
      assert step in _saved_steps(wd)
      assert step > (before[-1] if before else 0)
    else:
      assert lines[0] in ('error: interrupted',
                          'error: interrupted again; stopped without saving') or lines[0].startswith(
          'stopped by SIGINT: nothing trained since step'), lines[0]
    if (wd / 'train.lock').exists():
      assert _lock_is_free(wd)
  # the run goes on from the newest checkpoint, with each step logged once
  r = subprocess.run(args[:-5] + [f'--config.training.num_steps={_saved_steps(wd)[-1] + 1}'],
      capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr
  steps = [json.loads(l)['step'] for l in metrics.read_text().splitlines()]
  assert steps == sorted(set(steps)), steps


def test_short_bfloat16_run_has_no_nans(tiny_config):
  from ddpm_jax import data as data_lib, sharding
  from ddpm_jax.train import step as step_lib
  from ddpm_jax.sampling import make_sample_fn
  from ddpm_jax.samplers import make_sampler
  tiny_config.model.dtype = 'bfloat16'
  setup, state = step_lib.init_train_state(tiny_config)
  mesh = sharding.make_mesh()
  state = sharding.replicate(state, mesh)
  step = step_lib.make_train_step(setup, mesh)
  batches = data_lib.Batches(data_lib.load_embedded_mnist(), 8, 0)
  losses = []
  for i in range(4):
    state, m = step(state, sharding.shard_batch(batches.batch(i), mesh))
    losses.append(float(m['loss']))
  assert np.all(np.isfinite(losses))
  assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {'float32'}
  smp = make_sampler('ddim', np.asarray(setup.schedule.betas, np.float64), 5)
  x, _ = make_sample_fn(setup.apply, smp, (4, 8, 8, 1), mesh)(state.ema_params,
                                                            jax.random.key(0))
  assert x.dtype == np.float32 and np.isfinite(np.asarray(x)).all()


class _PoisonedSource:
  """MNIST-5k as floats in [-1, 1], NaN in the batch of one chosen step."""

  def __init__(self, bad_indices):
    from ddpm_jax import data as data_lib
    self.src, self.bad = data_lib.load_embedded_mnist(), set(bad_indices)

  def __len__(self):
    return len(self.src)

  def read(self, idx, positions=None):
    images, labels = self.src.read(idx)
    x = images.astype(np.float32) / 127.5 - 1.0
    if self.bad & set(map(int, idx)):
      x[:] = np.nan
    return x, labels


def test_non_finite_batch_stop_and_skip(tiny_config, tmp_path, monkeypatch):
  from ddpm_jax import data as data_lib
  bad_step = 4
  idx = data_lib.Batches(data_lib.load_embedded_mnist(), 8, 0).indices(bad_step)
  monkeypatch.setattr(data_lib, 'load_source', lambda cfg, **kw: _PoisonedSource(idx[:1]))
  tiny_config.training.num_steps = 8
  tiny_config.training.checkpoint_every = 2
  with pytest.raises(runtime.TrainingError, match=f'at step {bad_step} '):
    loop.train(tiny_config, str(tmp_path / 'stop'), progress=False)
  assert sorted(int(s) for s in os.listdir(tmp_path / 'stop' / 'checkpoints')) == [2, 4]
  tiny_config.training.nan_policy = 'skip'
  tiny_config.training.max_skipped_steps = 1
  assert tiny_config.training.num_sample_images == 0   # tiny.py: no sample grid
  summary = loop.train(tiny_config, str(tmp_path / 'skip'), progress=False)
  assert summary['step'] == 8 and summary['skipped_steps'] == 1
  assert np.isfinite(summary['final_loss'])
  assert not (tmp_path / 'skip' / 'samples').exists()


def test_failed_checkpoint_write_is_one_clear_line(tiny_config, tmp_path, monkeypatch):
  from ddpm_jax import checkpoint as ckpt_lib
  real_save = ckpt_lib.ocp.CheckpointManager.save

  def full_disk(self, step, *a, **k):
    if step >= 6:
      raise OSError(28, 'No space left on device')
    return real_save(self, step, *a, **k)
  monkeypatch.setattr(ckpt_lib.ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(ckpt_lib.CheckpointError, match='saving checkpoint 6 .* No space left'):
    loop.train(tiny_config, str(tmp_path), progress=False)
  assert load(str(tmp_path)).step == 3   # the earlier checkpoint still loads


def _host_times(config, workdir, monkeypatch, fetch_each_step: bool) -> dict:
  """When the loop handed each step to the device, for a model whose step
  carries ~0.1 s of extra device work (on the CPU, JAX's transfer guards do
  not see device_get: the arrays already live in host memory)."""
  import dataclasses
  import jax.numpy as jnp
  from ddpm_jax.train import step as step_lib
  real_init = step_lib.init_train_state

  def slow_init(config, ae=None):
    setup, state = real_init(config, ae)
    objective = setup.objective

    def slow(params, ae_params, x, y, key):
      loss, aux = objective(params, ae_params, x, y, key)
      m = jnp.full((400, 400), 1e-3) + jax.lax.stop_gradient(loss) * 1e-9
      for _ in range(30):
        m = jnp.tanh(m @ m)
      return loss + jax.lax.stop_gradient(jnp.mean(m)) * 1e-30, aux
    return dataclasses.replace(setup, objective=slow), state

  monkeypatch.setattr(step_lib, 'init_train_state', slow_init)
  # One device: on several fake CPU devices XLA runs each step before
  # returning, so only one shows whether the host runs ahead.
  from ddpm_jax import sharding
  real_mesh = sharding.make_mesh
  monkeypatch.setattr(sharding, 'make_mesh', lambda devices=None: real_mesh(jax.devices()[:1]))
  times = {}
  real_add = loop._Window.add

  def add(self, step, metrics):
    times[step] = time.monotonic()
    real_add(self, step, metrics)
    if fetch_each_step:
      float(jax.device_get(metrics['loss']))
  monkeypatch.setattr(loop._Window, 'add', add)
  loop.train(config, workdir, progress=False)
  return times


def test_steps_pull_nothing_from_the_device_between_logs(tiny_config, tmp_path, monkeypatch):
  tiny_config.training.num_steps = 17
  tiny_config.training.log_every = 8
  tiny_config.training.checkpoint_every = 8
  ratios = []
  for fetch in (False, True):   # True: the control, a loop that syncs each step
    t = _host_times(tiny_config, str(tmp_path / str(fetch)), monkeypatch, fetch)
    # Between the pulls at steps 0, 8 and 16 the host hands steps over at
    # once and then waits for the device; a loop that syncs waits at every
    # step. Median host time per step, over the device's mean time per step:
    handed = [t[i + 1] - t[i] for i in list(range(1, 7)) + list(range(9, 15))]
    ratios.append(np.median(handed) / ((t[16] - t[0]) / 16))
  assert ratios[0] < 0.25 and ratios[1] > 0.6, ratios


@pytest.mark.slow
def test_cifar10_config_at_batch_128_runs_a_step_on_8_devices():
  import subprocess
  import sys
  from conftest import FOUR_DEVICES_ENV
  code = '''
import jax, numpy as np
from ddpm_jax.config import load_config_file
from ddpm_jax import sharding
from ddpm_jax.train import step as step_lib
assert jax.device_count() == 8
config = load_config_file('configs/cifar10.py')
assert config.training.batch_size == 128
setup, state = step_lib.init_train_state(config)
mesh = sharding.make_mesh()
state = sharding.replicate(state, mesh)
step = step_lib.make_train_step(setup, mesh)
rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8),
         'label': np.zeros(128, np.int32)}
b = sharding.shard_batch(batch, mesh)
assert len(b['image'].sharding.device_set) == 8
assert b['image'].addressable_shards[0].data.shape == (16, 32, 32, 3)
state, m = step(state, b)
print('loss', float(m['loss']), 'params', setup.num_params, 'step', int(state.step))
'''
  env = dict(FOUR_DEVICES_ENV, XLA_FLAGS=FOUR_DEVICES_ENV['XLA_FLAGS'].replace(
      'device_count=4', 'device_count=8'))
  r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                     cwd=REPO, env=env, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  words = r.stdout.split()
  assert np.isfinite(float(words[1])) and words[3] == '35746307' and words[5] == '1'
