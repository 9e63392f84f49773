"""The training loop's guards: NaN stop/skip, the workdir lock, SIGTERM."""

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




def test_sigterm_checkpoints_and_exits_zero_then_resumes(tmp_path):
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
  assert proc.returncode == 0, err
  assert 'stopped by SIGTERM' in out
  steps = [int(s) for s in os.listdir(wd / 'checkpoints')]
  assert len(steps) == 1 and steps[0] >= 3
  r = subprocess.run(args[:-3] + [f'--config.training.num_steps={steps[0] + 2}'],
                     capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr
  assert f'resuming from checkpoint at step {steps[0]}' in r.stdout
  assert f'done: step {steps[0] + 2}' in r.stdout


def test_sigterm_while_starting_exits_zero(tmp_path):
  """SIGTERM during imports, restore or compile: a clean exit 0, no step lost."""
  wd = tmp_path / 'wd'
  args = [sys.executable, os.path.join(REPO, 'train.py'),
          f'--config={os.path.join(REPO, "configs", "tiny.py")}', f'--workdir={wd}']
  r = subprocess.run(args, capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr           # a checkpoint at step 6 to restore
  for delay in (0.5, 2.0):
    proc = subprocess.Popen(args + ['--config.training.num_steps=12'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert 'stopped by SIGTERM' in out
    print(f'SIGTERM {delay} s after start: exit 0 after {time.time() - t0:.1f} s')
  steps = sorted(int(s) for s in os.listdir(wd / 'checkpoints'))
  assert steps[-1] >= 6


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

  def read(self, idx):
    images, labels = self.src.read(idx)
    x = images.astype(np.float32) / 127.5 - 1.0
    if self.bad & set(map(int, idx)):
      x[:] = np.nan
    return x, labels


def test_non_finite_batch_stop_and_skip(tiny_config, tmp_path, monkeypatch):
  from ddpm_jax import data as data_lib
  bad_step = 4
  idx = data_lib.Batches(data_lib.load_embedded_mnist(), 8, 0).indices(bad_step)
  monkeypatch.setattr(data_lib, 'load_source', lambda cfg: _PoisonedSource(idx[:1]))
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
