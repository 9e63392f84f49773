import glob
import json
import os

import chex
import jax
import numpy as np
import pytest

from ddpm_jax import checkpoint as ckpt_lib
from ddpm_jax import sharding
from ddpm_jax.train import loop
from ddpm_jax.train import step as step_lib
from ddpm_jax.errors import UserError
from ddpm_jax.pipeline import load


def _host(state):
  s = jax.device_get(state)
  return dict(step=s.step, params=s.params, ema=s.ema_params, opt=s.opt_state,
              rng=np.asarray(jax.random.key_data(s.rng)))


def test_save_restore_round_trip_is_bit_exact(tiny_config, tmp_path):
  setup, state = step_lib.init_train_state(tiny_config)
  mesh = sharding.make_mesh()
  state = sharding.replicate(state, mesh)
  step = step_lib.make_train_step(setup, mesh)
  from ddpm_jax import data as data_lib
  b = data_lib.Batches(data_lib.load_embedded_mnist(), 8, 0)
  for i in range(2):
    state, _ = step(state, sharding.shard_batch(b.batch(i), mesh))
  ck = ckpt_lib.Checkpointer(str(tmp_path))
  ck.save(2, state.to_saveable(), {'config': tiny_config.to_dict()})
  ck.wait()
  _, target = step_lib.init_train_state(tiny_config)
  restored = step_lib.TrainState.from_saveable(ck.restore(2, target.to_saveable(), mesh))
  chex.assert_trees_all_equal(_host(state), _host(restored))
  assert restored.params['conv_in']['kernel'].sharding.is_fully_replicated
  _, meta = ck.read_meta()
  assert meta['step'] == 2 and meta['config']['model']['ch'] == 8
  # Inference reads one tree: the EMA params alone, equal to the saved ones.
  ema = ck.restore_params(2, 'ema_params', target.ema_params, mesh)
  chex.assert_trees_all_equal(jax.device_get(ema), jax.device_get(state.ema_params))
  ck.close()


def _logged_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [(r['step'], r['loss']) for r in map(json.loads, f)]


@pytest.fixture(scope='module')
def two_checkpoints(tmp_path_factory):
  """A tiny run (6 steps, each logged) with checkpoints at steps 3 and 6;
  the tests that change it work on a copy."""
  from ddpm_jax.config import load_config_file
  from conftest import REPO
  c = load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))
  c.training.checkpoint_every = 3
  c.training.log_every = 1
  wd = tmp_path_factory.mktemp('two_checkpoints') / 'wd'
  loop.train(c, str(wd), progress=False)
  return wd


def test_resume_continues_the_same_run(tiny_config, tmp_path, two_checkpoints):
  tiny_config.training.log_every = 1
  full = two_checkpoints   # tiny_config, log_every 1, in one run
  tiny_config.training.num_steps = 3
  loop.train(tiny_config, str(tmp_path / 'split'), progress=False)
  tiny_config.training.num_steps = 6
  loop.train(tiny_config, str(tmp_path / 'split'), progress=False)
  split, full_losses = _logged_losses(tmp_path / 'split'), _logged_losses(full)
  assert [s for s, _ in split] == [s for s, _ in full_losses] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([l for _, l in split], [l for _, l in full_losses],
                             rtol=1e-6)
  a = load(str(full), use_ema=False)
  b = load(str(tmp_path / 'split'), use_ema=False)
  assert a.step == b.step == 6
  chex.assert_trees_all_close(jax.device_get(a.params), jax.device_get(b.params),
                              rtol=1e-6, atol=1e-7)
  # keep-last-K: tiny keeps 2 of the checkpoints at 3 and 6
  assert sorted(os.listdir(full / 'checkpoints')) == ['3', '6']


def test_load_and_sample_in_three_lines(two_checkpoints):
  pipe = load(str(two_checkpoints))   # a tiny_config run
  x = pipe.sample(num=3, seed=0)
  assert x.shape == (3, 8, 8, 1) and np.isfinite(x).all()
  np.testing.assert_array_equal(x, pipe.sample(num=3, seed=0))


def test_other_model_config_is_refused(tiny_config, tmp_path, two_checkpoints):
  import shutil
  tmp_path = tmp_path / 'wd'
  shutil.copytree(two_checkpoints, tmp_path)   # a tiny_config run
  before = sorted(glob.glob(str(tmp_path / '**'), recursive=True))
  tiny_config.model.ch = 16
  tiny_config.training.num_steps = 12
  with pytest.raises(UserError, match='another model config.*model.ch'):
    loop.train(tiny_config, str(tmp_path), progress=False)
  assert sorted(glob.glob(str(tmp_path / '**'), recursive=True)) == before


def _damage(step_dir, how):
  """What an interrupted copy, a failing disk or a stray edit leaves."""
  data = [f for f in glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd', '*'))]
  assert data
  if how == 'truncated':
    for f in data:
      with open(f, 'r+b') as fh:
        fh.truncate(os.path.getsize(f) // 2)
  elif how == 'deleted':   # every array file: whichever a reader needs is gone
    for f in data:
      os.remove(f)
  elif how == 'metadata':
    with open(os.path.join(step_dir, 'state', '_METADATA'), 'w') as f:
      f.write('{"tree_metadata": ')
  elif how == 'meta':
    with open(os.path.join(step_dir, 'meta', 'metadata'), 'w') as f:
      f.write('not json')


def test_missing_checkpoints(tmp_path):
  with pytest.raises(UserError, match='nothing does not exist'):
    load(str(tmp_path / 'nothing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ckpt_lib.CheckpointError, match='no checkpoint'):
    load(str(tmp_path / 'empty'))


# pytest's own unraisable hook (in place of the default one the settle step
# drains) reports the failed reads' coroutines as warnings: not the user's.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('how', ['deleted', 'metadata', 'meta'])
def test_a_damaged_newest_checkpoint_is_skipped_by_load_and_set_aside_by_training(
    tiny_config, tmp_path, how, capfd, two_checkpoints):
  import shutil
  tmp_path = tmp_path / 'wd'
  shutil.copytree(two_checkpoints, tmp_path)
  tiny_config.training.checkpoint_every = 3
  _damage(str(tmp_path / 'checkpoints' / '6'), how)
  capfd.readouterr()
  with pytest.warns(UserWarning, match='checkpoint 6 in .* is damaged: .*; using '
                    'the checkpoint before it'):
    pipe = load(str(tmp_path))
  assert pipe.step == 3 and pipe.params is not None
  with pytest.raises(ckpt_lib.DamagedCheckpoint, match='^checkpoint 6 in .* is damaged'):
    load(str(tmp_path), step=6)
  with pytest.raises(ckpt_lib.CheckpointError, match='no checkpoint for step 5'):
    load(str(tmp_path), step=5)
  out, err = capfd.readouterr()
  assert 'Traceback' not in err and 'Event loop' not in err, err[:2000]
  tiny_config.training.num_steps = 8
  summary = loop.train(tiny_config, str(tmp_path), progress=False)
  out, err = capfd.readouterr()
  assert summary['step'] == 8 and summary['steps_run'] == 5   # from step 3
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('warning: checkpoint 6 in '), err[:2000]
  assert 'moved it to ' in lines[0]
  assert sorted(os.listdir(tmp_path / 'damaged_checkpoints')) == ['6']   # kept
  assert 'resuming from checkpoint at step 3' in out


def test_truncated_checkpoint_through_the_commands(tiny_config, tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  wd = tmp_path / 'w'
  run = lambda script, *a: subprocess.run(
      [sys.executable, os.path.join(REPO, script), *a], capture_output=True,
      text=True, timeout=300)
  r = run('train.py', '--config', 'tiny', f'--workdir={wd}',
          '--config.training.checkpoint_every=3')
  assert r.returncode == 0, r.stderr
  _damage(str(wd / 'checkpoints' / '6'), 'truncated')
  r = run('sample.py', f'--workdir={wd}', '--num=4', f'--out={tmp_path}/s.png')
  assert r.returncode == 0, r.stderr[-3000:]
  err = [l for l in r.stderr.splitlines() if l.strip() and 'sampl' not in l]
  assert len(err) == 1 and err[0].startswith('warning: checkpoint 6 in '), r.stderr[-3000:]
  r = run('sample.py', f'--workdir={wd}', '--num=4', '--checkpoint=6',
          f'--out={tmp_path}/s6.png')
  assert r.returncode == 2 and r.stderr.count('\n') == 1, r.stderr[-3000:]
  assert r.stderr.startswith('error: checkpoint 6 in ') and 'is damaged' in r.stderr
  assert not (tmp_path / 's6.png').exists()
  r = run('train.py', f'--workdir={wd}', '--config.training.num_steps=8')
  assert r.returncode == 0, r.stderr[-3000:]
  err = [l for l in r.stderr.replace('\r', '\n').splitlines()
         if l.strip() and not l.startswith('train:')]
  assert len(err) == 1 and 'moved it to' in err[0], r.stderr[-3000:]
  assert 'resuming from checkpoint at step 3' in r.stdout
  assert 'done: step 8' in r.stdout
  assert os.listdir(wd / 'damaged_checkpoints') == ['6']
