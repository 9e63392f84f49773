"""Two CPU processes on localhost form one run (gloo collectives)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l)['loss'] for l in f]


def test_two_processes_equal_one_process(tmp_path):
  env = dict(os.environ, XLA_FLAGS='')  # one CPU device per process
  args = [sys.executable, os.path.join(REPO, 'train.py'),
          f'--config={os.path.join(REPO, "configs", "tiny.py")}',
          '--config.training.num_steps=4', '--config.training.log_every=1',
          '--config.training.checkpoint_every=2', '--cpu_collectives=gloo']
  port = _free_port()
  two = tmp_path / 'two'
  procs = [subprocess.Popen(args + [f'--workdir={two}', f'--coordinator=localhost:{port}',
                                    '--num_processes=2', f'--process_id={i}'],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert len(_losses(two)) == 4  # only process 0 writes logs
  # The same global batches on one process (here, on one device).
  import jax
  from ddpm_jax import data as data_lib, sharding
  from ddpm_jax.train import step as step_lib
  from ddpm_jax.config import load_config_file
  config = load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))
  setup, state = step_lib.init_train_state(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = sharding.replicate(state, mesh)
  step = step_lib.make_train_step(setup, mesh)
  batches = data_lib.Batches(data_lib.load_embedded_mnist(), 8, config.seed)
  one = []
  for i in range(4):
    state, m = step(state, sharding.shard_batch(batches.batch(i), mesh))
    one.append(float(m['loss']))
  np.testing.assert_allclose(_losses(two), one, rtol=1e-5)
  assert sorted(os.listdir(two / 'checkpoints')) == ['2', '4']
  assert (two / 'samples' / 'step_0000004.png').is_file()
