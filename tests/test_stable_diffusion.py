"""Stable Diffusion folders as workdirs: import, every mode, the same images
as diffusers' pipelines from the same latents (tests/fixtures/sd, made by
make_sd_fixtures.py with diffusers 0.42.1; no torch here), bad input."""

import json
import os
import shutil
import subprocess
import sys

import chex
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import REPO
from ddpm_jax import stable_diffusion as sd
from ddpm_jax.errors import UserError
from ddpm_jax.pipeline import load

FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'sd')
# fixture name -> (our sampler, spacing)
SAMPLERS = {'ddim': ('ddim', None), 'euler': ('euler', None),
            'dpmpp_karras': ('dpm++2m', 'karras')}


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  out = {}
  for name in ('sd1', 'sd2', 'inpaint'):
    wd = str(tmp_path_factory.mktemp('sd') / name)
    sd.import_pipeline(os.path.join(FIXTURES, name), wd)
    out[name] = wd
  return out


def _ref(name):
  return np.load(os.path.join(FIXTURES, name, 'reference.npz'))


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


@pytest.mark.parametrize('name', ['sd1', 'sd2'])
def test_text_to_image_gives_diffusers_images(workdirs, name):
  pipe = load(workdirs[name])
  r = _ref(name)
  for fixture, (sampler, spacing) in SAMPLERS.items():
    opts = {'spacing': spacing} if spacing else {}
    x = pipe.sample(num=1, prompt=str(r['pipe_prompt']),
                    negative_prompt=str(r['pipe_negative_prompt']),
                    guidance_scale=float(r['pipe_guidance_scale']),
                    sampler=sampler, num_steps=int(r['pipe_steps']),
                    noise=_nhwc(r['pipe_latents']), **opts)
    want = r[f'{fixture}_image']                     # [0, 1], NHWC
    got = np.clip((x + 1) / 2, 0, 1)
    err = np.abs(got - want).max()
    assert err < 1e-4, (fixture, err)   # measured 1.3e-6 to 3.2e-6


def test_a_new_prompt_seed_or_scale_does_not_recompile(workdirs):
  pipe = load(workdirs['sd1'])
  calls = []
  inner = pipe.apply
  pipe.apply = chex.assert_max_traces(n=1)(lambda *a: (calls.append(1), inner(*a))[1])
  for prompt, seed, w in (('a cat', 0, 7.5), ('a dog on a mat', 1, 3.0)):
    x = pipe.sample(num=2, prompt=prompt, negative_prompt='blurry', seed=seed,
                    guidance_scale=w, sampler='dpm++2m', spacing='karras',
                    num_steps=3)
    assert x.shape == (2, 32, 32, 3) and np.all(np.isfinite(x))


def test_every_mode_runs(workdirs, capsys):
  pipe = load(workdirs['sd1'])
  img = np.random.default_rng(0).uniform(-1, 1, (32, 32, 3)).astype(np.float32)
  mask = np.zeros((32, 32, 1), np.float32)
  mask[:, 16:] = 1
  kw = dict(num=1, prompt='a red square', num_steps=2, sampler='euler')
  req = pipe.request(height=48, width=40, **kw)   # checked, not sampled
  assert dict(req.fn_args)['shape'] == (24, 20, 4)
  x = pipe.sample(init_image=img, strength=0.6, **kw)
  assert x.shape == (1, 32, 32, 3)
  x = pipe.sample(init_image=img, mask=mask, **kw)
  np.testing.assert_array_equal(x[:, :, :16], np.broadcast_to(img, x.shape)[:, :, :16])
  x = pipe.sample(init_image=img[8:24, 8:24], outpaint=(8, 8, 8, 8), **kw)
  assert x.shape == (1, 32, 32, 3)
  x = pipe.sample(init_image=img, mask=mask, jumps=1, num=1, prompt='a',
                  sampler='euler_a', num_steps=12)
  assert np.all(np.isfinite(x))
  long = ' '.join(['word'] * 100)
  pipe.request(num=1, prompt=long, num_steps=2, sampler='ddim')
  assert 'longer than 77 tokens and were cut' in capsys.readouterr().err
  with pytest.raises(UserError, match='height must be a multiple of 2'):
    pipe.sample(height=33, **kw)


def test_the_inpainting_unet_reads_the_mask(workdirs):
  pipe = load(workdirs['inpaint'])
  r = _ref('inpaint')
  img = r['inpaint_image'][0] * 2 - 1
  mask = r['inpaint_mask'][0]
  x = pipe.sample(num=1, prompt=str(r['pipe_prompt']), sampler='ddim',
                  num_steps=int(r['pipe_steps']), init_image=img, mask=mask,
                  negative_prompt=str(r['pipe_negative_prompt']),
                  guidance_scale=float(r['pipe_guidance_scale']),
                  noise=_nhwc(r['pipe_latents']), paste_known=False)
  # diffusers encodes the masked image with a posterior sample, we take its
  # mean: close to diffusers' image, not equal
  err = np.abs(np.clip((x + 1) / 2, 0, 1) - r['inpaint_image_out']).mean()
  assert err < 0.05, err
  x = pipe.sample(num=1, prompt='a', num_steps=2, sampler='ddim')   # plain generation
  assert x.shape == (1, 32, 32, 3)
  with pytest.raises(UserError, match='does not apply to an inpainting UNet'):
    pipe.request(1, prompt='a', init_image=img, mask=mask, reconstruction=5.0)


def test_a_swapped_vae_decodes(workdirs):
  a = load(workdirs['sd1'])
  b = load(workdirs['sd1'], vae=os.path.join(FIXTURES, 'sd2', 'vae'))
  kw = dict(num=1, prompt='a', num_steps=2, sampler='ddim', seed=3)
  assert not np.allclose(a.sample(**kw), b.sample(**kw))


def _copy(tmp_path, name='sd1'):
  dst = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), dst)
  return dst


def test_bad_folders_are_one_line(tmp_path):
  src = _copy(tmp_path)
  shutil.rmtree(src / 'tokenizer')
  with pytest.raises(UserError, match='has no tokenizer/ folder'):
    sd.import_pipeline(str(src), str(tmp_path / 'w1'))
  src = _copy(tmp_path / 'x')
  index = json.loads((src / 'model_index.json').read_text())
  index['_class_name'] = 'StableDiffusionXLPipeline'
  (src / 'model_index.json').write_text(json.dumps(index))
  with pytest.raises(UserError, match='SDXL .* is not supported yet'):
    sd.import_pipeline(str(src), str(tmp_path / 'w2'))
  src = _copy(tmp_path / 'y')
  path = src / 'unet' / 'diffusion_pytorch_model.safetensors'
  t = load_file(str(path))
  k = 'conv_in.weight'
  t[k] = np.zeros((t[k].shape[0] + 1,) + t[k].shape[1:], t[k].dtype)
  save_file(t, str(path))
  with pytest.raises(UserError, match='conv_in.weight has shape'):
    sd.import_pipeline(str(src), str(tmp_path / 'w3'))
  assert not os.path.exists(tmp_path / 'w3' / 'checkpoints')


def test_the_commands(workdirs, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, *a], capture_output=True,
                                  text=True, timeout=600, cwd=tmp_path)
  wd = str(tmp_path / 'wd')
  # a flag's value after a space is not taken for the positional SRC
  r = run('-m', 'ddpm_jax.cli.import_diffusers', '--workdir', wd,
          os.path.join(FIXTURES, 'sd2'))
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.startswith(f'imported {FIXTURES}/sd2 (StableDiffusionPipeline) '
                             f'into {wd} (checkpoint 0)')
  r = run(os.path.join(REPO, 'sample.py'), f'--workdir={wd}', '--prompt=a cat',
          '--negative-prompt=blurry', '--sampler=dpm++2m', '--spacing=karras',
          '--steps=3', '--num=2', '--out=s.png')
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.getsize(tmp_path / 's.png') > 0
  r = run(os.path.join(REPO, 'sample.py'), f'--workdir={wd}', '--prompt=a',
          '--height=33', '--out=t.png')
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      'error: --height must be a multiple of 2 for this model, got 33')


def test_bfloat16_weights_and_activations(workdirs, tmp_path):
  wd = str(tmp_path / 'bf16')
  sd.import_pipeline(os.path.join(FIXTURES, 'sd1'), wd, dtype='bfloat16')
  half, full = load(wd), load(workdirs['sd1'])
  assert {a.dtype.name for a in __import__('jax').tree.leaves(half.params)} == {'bfloat16'}
  r = _ref('sd1')
  kw = dict(num=1, prompt=str(r['pipe_prompt']), sampler='ddim', num_steps=5,
            noise=_nhwc(r['pipe_latents']), guidance_scale=7.5)
  a, b = half.sample(**kw), full.sample(**kw)
  assert np.all(np.isfinite(a)) and np.abs(a - b).mean() < 0.05, np.abs(a - b).mean()
