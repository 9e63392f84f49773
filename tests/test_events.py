"""TensorBoard event files, read back with TensorBoard's own reader."""

import os
import shutil

import numpy as np
import pytest

from ddpm_jax.train import events
from ddpm_jax.train import loop


def _accumulator(logdir):
  from tensorboard.backend.event_processing import event_accumulator as ea
  acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
  acc.Reload()
  return acc


def test_records_are_tfrecords_and_a_torn_tail_is_dropped():
  a, b = events.frame(b'first'), events.frame(b'second record')
  assert events.read_records(a + b) == [b'first', b'second record']
  assert events.read_records(a + b[:-3]) == [b'first']        # torn by a kill
  broken = bytearray(a + b)
  broken[len(a) + 14] ^= 0xFF                                  # a flipped byte
  assert events.read_records(bytes(broken)) == [b'first']


def test_tensorboard_sees_a_run_and_a_resume_writes_no_step_twice(tiny_config, tmp_path):
  wd = tmp_path / 'run'
  c = tiny_config
  c.training.num_steps, c.training.log_every, c.training.checkpoint_every = 5, 1, 2
  c.training.num_sample_images, c.training.sample_every = 4, 2
  loop.train(c, str(wd), progress=False)
  acc = _accumulator(wd)
  tags = acc.Tags()
  assert {'loss', 'learning_rate', 'grad_norm', 'skipped_steps', 'steps_per_sec',
          'images_per_sec'} <= set(tags['scalars'])
  assert [e.step for e in acc.Scalars('loss')] == [1, 2, 3, 4, 5]
  assert [e.step for e in acc.Images('samples')] == [2, 4, 5]
  lr = [e.value for e in acc.Scalars('learning_rate')]
  assert lr[0] == pytest.approx(c.training.learning_rate / c.training.warmup_steps)
  assert acc.Images('samples')[0].encoded_image_string[:4] == b'\x89PNG'
  losses = {e.step: e.value for e in acc.Scalars('loss')}
  # A run that died after logging step 5 but before saving it:
  shutil.rmtree(wd / 'checkpoints' / '5')
  c.training.num_steps = 6
  loop.train(c, str(wd), progress=False)
  acc = _accumulator(wd)
  steps = [e.step for e in acc.Scalars('loss')]
  assert steps == [1, 2, 3, 4, 5, 6], steps
  assert len([f for f in os.listdir(wd) if f.startswith(events.PREFIX)]) == 2
  again = {e.step: e.value for e in acc.Scalars('loss')}
  assert again[4] == losses[4] and np.isclose(again[5], losses[5], rtol=1e-5)  # exact resume


def test_an_autoencoder_logs_its_terms_and_reconstructions(tmp_path):
  from ddpm_jax.config import load_config_file
  from conftest import REPO
  c = load_config_file(os.path.join(REPO, 'configs', 'mnist_autoencoder.py'))
  c.data.image_size = 8
  c.autoencoder.ch, c.autoencoder.ch_mult, c.autoencoder.num_res_blocks = 8, (1, 2), 1
  c.autoencoder.num_groups = 4
  c.training.batch_size, c.training.num_steps, c.training.log_every = 8, 2, 1
  c.training.num_sample_images = 4
  loop.train(c, str(tmp_path), progress=False)
  acc = _accumulator(tmp_path)
  assert {'reconstruction', 'kl', 'loss'} <= set(acc.Tags()['scalars'])
  assert [e.step for e in acc.Images('reconstructions')] == [2]


def test_profile_steps_write_a_trace_for_tensorboard(tiny_config, tmp_path):
  tiny_config.training.num_steps = 4
  loop.train(tiny_config, str(tmp_path), progress=False, profile_steps=(1, 3))
  runs = os.listdir(tmp_path / 'plugins' / 'profile')
  assert len(runs) == 1
  assert any(f.endswith('.xplane.pb') for f in os.listdir(tmp_path / 'plugins' / 'profile' / runs[0]))
