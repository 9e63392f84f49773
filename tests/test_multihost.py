"""Two CPU processes on localhost form one run (gloo collectives)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from conftest import REPO


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l)['loss'] for l in f]


_ARGS = [sys.executable, os.path.join(REPO, 'train.py'),
         f'--config={os.path.join(REPO, "configs", "tiny.py")}',
         '--config.training.log_every=1', '--cpu_collectives=gloo']


def _start_two(workdir, *args):
  env = dict(os.environ, XLA_FLAGS='--xla_backend_optimization_level=0')  # one
  # CPU device per process
  port = _free_port()
  return [subprocess.Popen(_ARGS + list(args) + [
      f'--workdir={workdir}', f'--coordinator=localhost:{port}',
      '--num_processes=2', f'--process_id={i}'], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]


def _one_process_losses(num_steps):
  """The same global batches on one process (here, on one device)."""
  import jax
  from ddpm_jax import data as data_lib, sharding
  from ddpm_jax.config import load_config_file
  from ddpm_jax.train import step as step_lib
  config = load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))
  setup, state = step_lib.init_train_state(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = sharding.replicate(state, mesh)
  step = step_lib.make_train_step(setup, mesh)
  batches = data_lib.Batches(data_lib.load_embedded_mnist(), 8, config.seed)
  one = []
  for i in range(num_steps):
    state, m = step(state, sharding.shard_batch(batches.batch(i), mesh))
    one.append(float(m['loss']))
  return one


def test_two_processes_equal_one_process(tmp_path):
  two = tmp_path / 'two'
  procs = _start_two(two, '--config.training.num_steps=4',
                     '--config.training.checkpoint_every=2',
                     '--config.training.num_sample_images=4')
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert len(_losses(two)) == 4  # only process 0 writes logs
  np.testing.assert_allclose(_losses(two), _one_process_losses(4), rtol=1e-5)
  assert sorted(os.listdir(two / 'checkpoints')) == ['2', '4']
  assert (two / 'samples' / 'step_0000004.png').is_file()


def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path):
  """A pre-empted VM loses one host: both agree on a step, save it, exit 143,
  and the resumed run repeats an uninterrupted run's losses."""
  wd = tmp_path / 'wd'
  procs = _start_two(wd, '--config.training.num_steps=100000',
                     '--config.training.checkpoint_every=100000')
  metrics = wd / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and
                                        len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)          # only process 1
  t0 = time.time()
  outs = [p.communicate(timeout=120) for p in procs]
  seconds = time.time() - t0
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 143, err[-3000:]     # stopped by SIGTERM, saved
  assert 'stopped by SIGTERM' in outs[0][0]
  steps = sorted(int(s) for s in os.listdir(wd / 'checkpoints'))
  assert len(steps) == 1 and steps[0] >= 3, steps
  print(f'SIGTERM to one of two processes: both exited 143 in {seconds:.1f} s, '
        f'checkpoint at step {steps[0]}')
  end = steps[0] + 2
  procs = _start_two(wd, f'--config.training.num_steps={end}',
                     '--config.training.checkpoint_every=100000')
  for p, (out, err) in zip(procs, [p.communicate(timeout=300) for p in procs]):
    assert p.returncode == 0, err[-3000:]
  np.testing.assert_allclose(_losses(wd), _one_process_losses(end), rtol=1e-5)
