"""Latent diffusion: the latent scale, a tiny trained autoencoder, the latent
model's self-contained checkpoint, its samplers and its bad inputs."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from ddpm_jax import config as config_lib
from ddpm_jax import data as data_lib
from ddpm_jax.errors import UserError

AE_STEPS = 300


def _ae_config():
  c = config_lib.load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))
  c.task = 'autoencoder'
  c.autoencoder.ch = 8
  c.autoencoder.ch_mult = (1, 2)        # f = 2: 8×8 images, 4×4×4 latents
  c.autoencoder.num_groups = 4
  c.autoencoder.scale_images = 400
  c.training.num_steps = AE_STEPS
  c.training.learning_rate = 3e-3
  c.training.warmup_steps = 20
  c.training.checkpoint_every = AE_STEPS
  c.training.log_every = 50
  return c


def _latent_config(ae_workdir):
  c = config_lib.load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))
  c.latent.autoencoder_workdir = str(ae_workdir)
  c.autoencoder = _ae_config().autoencoder
  c.model.class_conditional = True
  c.model.attn_resolutions = (2,)       # the 4×4 latent's second level
  c.sampling.clip_x0 = False
  c.sampling.sampler = 'ddim'
  c.sampling.num_steps = 5
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  from ddpm_jax.train.loop import train
  root = tmp_path_factory.mktemp('latent')
  train(_ae_config(), str(root / 'ae'), progress=False)
  train(_latent_config(root / 'ae'), str(root / 'lat'), progress=False)
  return root


def _held_out(n=200):
  src = data_lib.load_embedded_mnist()
  idx = np.linspace(0, len(src) - 1, n).astype(np.int64)
  images, _ = src.read(idx)
  return np.asarray(data_lib.preprocess(jax.numpy.asarray(images), 8, False, None))


def test_latent_scale_is_one_over_the_std_of_the_latents():
  from ddpm_jax import latent
  from ddpm_jax.models.autoencoder import Posterior
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
  source = data_lib.ArraySource(images, np.zeros(300, np.int64))

  def encode(params, x):   # a fake encoder: z = 3x + 1, deterministic
    return Posterior(3.0 * x + 1.0, np.full(x.shape, -60.0, np.float32))
  c = _ae_config()
  s = latent.latent_scale(encode, None, source, c, batch=128)
  x = images.astype(np.float64) / 127.5 - 1.0
  np.testing.assert_allclose(s, 1.0 / (3.0 * x).std(), rtol=1e-4)


def test_a_trained_autoencoder_reconstructs_held_out_digits(trained):
  from ddpm_jax import latent, sharding
  cfg, params, scale, step = latent.restore_autoencoder(
      str(trained / 'ae'), -1, sharding.make_mesh())
  assert step == AE_STEPS and np.isfinite(scale) and scale > 0
  fns = latent.autoencoder_fns(cfg.autoencoder, 1)
  x = _held_out()
  rec = np.asarray(fns.reconstruct(params, x))
  mse = np.mean((rec - x) ** 2, axis=(1, 2, 3))
  psnr = float(np.mean(10 * np.log10(4.0 / mse)))        # range 2: peak² = 4
  base = np.mean((x - x.mean(0)) ** 2, axis=(1, 2, 3))
  psnr_mean_image = float(np.mean(10 * np.log10(4.0 / base)))
  assert psnr > 18.0 and psnr > psnr_mean_image + 6.0, (psnr, psnr_mean_image)


def test_latent_checkpoint_restores_without_the_autoencoder_workdir(trained, tmp_path):
  from ddpm_jax.pipeline import load
  before = load(str(trained / 'lat')).sample(num=4, seed=1, labels=[3])
  moved = tmp_path / 'ae_moved'
  shutil.move(str(trained / 'ae'), moved)
  try:
    pipe = load(str(trained / 'lat'))
    after = pipe.sample(num=4, seed=1, labels=[3])
  finally:
    shutil.move(str(moved), str(trained / 'ae'))
  assert after.shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim', 'dpm++2m', 'euler', 'euler_a',
                                     'heun', 'dpm2'])
def test_every_sampler_runs_in_latent_space(trained, sampler):
  from ddpm_jax.pipeline import load
  pipe = load(str(trained / 'lat'))
  kw = dict(num=2, seed=0, sampler=sampler, num_steps=4, labels=[1],
            guidance_scale=2.0)
  a = pipe.sample(**kw)
  assert a.shape == (2, 8, 8, 1) and np.all(np.isfinite(a))
  assert a.min() >= -1 and a.max() <= 1
  np.testing.assert_array_equal(a, pipe.sample(**kw))


def test_img2img_inpainting_and_outpainting_in_latent_space(trained):
  from ddpm_jax.pipeline import load
  pipe = load(str(trained / 'lat'))
  x = _held_out(1)[0]
  assert pipe.sample(num=2, init_image=x, strength=0.5).shape == (2, 8, 8, 1)
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:, 4:] = 1.0
  pasted = pipe.sample(num=2, init_image=x, mask=mask)
  np.testing.assert_array_equal(pasted[:, :, :4], np.broadcast_to(x, pasted.shape)[:, :, :4])
  # a latent model's edit takes the jumps, not reconstruction guidance
  a = dict(pipe.request(2, init_image=x, mask=mask).fn_args)
  assert (a['jumps'], a['reconstruction']) == (pipe.config.sampling.edit_jumps, 0.0)
  guided = pipe.sample(num=2, init_image=x, mask=mask, reconstruction=5.0)
  np.testing.assert_array_equal(guided[:, :, :4], pasted[:, :, :4])
  decoded = pipe.sample(num=2, init_image=x, mask=mask, paste_known=False)
  assert not np.array_equal(decoded[:, :, :4], pasted[:, :, :4])
  np.testing.assert_array_equal(decoded[:, :, 4:], pasted[:, :, 4:])
  wide = pipe.sample(num=1, init_image=x, outpaint=(4, 0, 0, 4))  # f·2 = 4 divides 12
  assert wide.shape == (1, 12, 12, 1)
  np.testing.assert_array_equal(wide[0, :8, 4:], x)
  with pytest.raises(UserError, match='init_image has shape'):
    pipe.sample(num=1, init_image=np.zeros((6, 6, 1)), strength=0.5)
  with pytest.raises(UserError, match=r'multiples of 4\); the nearest size that works'):
    pipe.sample(num=1, init_image=x, outpaint=(2, 0, 0, 0))


def _run(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def _one_line(r, needle):
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr
  assert lines[0].startswith('error: ') and needle in lines[0], lines[0]


TINY = os.path.join(REPO, 'configs', 'tiny.py')
LATENT_FLAGS = ['--config.model.attn_resolutions=(2,)', '--config.sampling.clip_x0=False',
                '--config.autoencoder.ch=8', '--config.autoencoder.ch_mult=(1,2)',
                '--config.autoencoder.num_groups=4']


def test_resume_with_another_autoencoder_is_refused(trained, tmp_path):
  other = tmp_path / 'ae2'
  shutil.copytree(trained / 'ae', other)
  from ddpm_jax.train.loop import train
  c = _ae_config()
  c.training.num_steps = AE_STEPS + 3      # the same autoencoder, trained on
  train(c, str(other), progress=False)
  lat = tmp_path / 'lat'
  shutil.copytree(trained / 'lat', lat)
  r = _run(f'--config={TINY}', f'--workdir={lat}', *LATENT_FLAGS,
           '--config.model.class_conditional=True',
           f'--config.latent.autoencoder_workdir={other}',
           '--config.training.num_steps=8')
  _one_line(r, 'another model config (latent_autoencoder: checkpoint')


def test_bad_autoencoder_workdirs_are_one_line(trained, tmp_path):
  (tmp_path / 'empty').mkdir()
  for wd, needle in [
      (tmp_path / 'missing', 'autoencoder workdir'),
      (tmp_path / 'empty', 'no checkpoint found'),
      (trained / 'lat', 'holds a diffusion model, not an autoencoder'),
  ]:
    r = _run(f'--config={TINY}', f'--workdir={tmp_path / "out"}', *LATENT_FLAGS,
             f'--config.latent.autoencoder_workdir={wd}')
    _one_line(r, needle)
  # an autoencoder whose 4×4 latent a UNet of four levels cannot take
  r = _run(f'--config={TINY}', f'--workdir={tmp_path / "out"}', *LATENT_FLAGS,
           '--config.model.ch_mult=(1,2,2,2)',
           f'--config.latent.autoencoder_workdir={trained / "ae"}')
  _one_line(r, 'the latent size 4 (data.image_size=8 / f=2) cannot be halved 3 times')
  r = _run(f'--config={TINY}', f'--workdir={tmp_path / "out"}', *LATENT_FLAGS,
           '--config.data.image_size=4',
           f'--config.latent.autoencoder_workdir={trained / "ae"}')
  _one_line(r, 'was trained on 8x8x1 images')
  r = subprocess.run([sys.executable, os.path.join(REPO, 'sample.py'),
                      f'--workdir={trained / "ae"}', f'--out={tmp_path / "s.png"}'],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
  _one_line(r, 'holds an autoencoder, which does not sample')
  assert not os.path.exists(tmp_path / 'out')   # nothing made before the error
