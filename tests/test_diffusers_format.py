"""diffusers UNet2DModel checkpoints in and out, against fixtures that
diffusers itself built (tests/fixtures/make_diffusers_fixtures.py); the
suite needs neither torch nor diffusers."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO
from ddpm_jax import builders
from ddpm_jax import diffusers_format as df
from ddpm_jax.errors import UserError
from ddpm_jax.models.unet import make_apply
from ddpm_jax.pipeline import load

FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'diffusers')
CASES = ['ddpm_attn_one', 'attn_many_classes', 'scaled_linear_sample']


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  out = {}
  for name in CASES:
    wd = str(tmp_path_factory.mktemp(name) / 'wd')
    df.import_folder(os.path.join(FIXTURES, name), wd)
    out[name] = wd
  return out


@pytest.mark.parametrize('name', CASES)
def test_the_imported_model_predicts_what_diffusers_does(imported, name):
  pipe = load(imported[name])
  e = np.load(os.path.join(FIXTURES, name, 'expected.npz'))
  labels = e['labels'] if e['labels'].size else None
  graphdef, _ = builders.abstract_model(pipe.config)
  y = None if labels is None else labels.astype(np.int32)
  raw = np.asarray(jax.jit(make_apply(graphdef))(pipe.params, e['x_t'], e['t'].astype(np.int32), y))
  scale = np.abs(e['raw']).max()
  assert np.abs(raw - e['raw']).max() / scale < 1e-4
  eps = pipe.predict_noise(e['x_t'], e['t'], labels=labels)
  # x0-prediction: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab) multiplies float32
  # rounding by 1/sqrt(1 - ab_0) (about 100 at t = 0 here).
  tol = 1e-3 if pipe.config.diffusion.prediction == 'x0' else 1e-4
  assert np.abs(eps - e['eps']).max() / np.abs(e['eps']).max() < tol


@pytest.mark.parametrize('name', CASES)
def test_ddim_from_the_same_noise_gives_diffusers_images(imported, name):
  pipe = load(imported[name])
  e = np.load(os.path.join(FIXTURES, name, 'expected.npz'))
  labels = e['ddim_labels'] if e['ddim_labels'].size else None
  x = pipe.sample(num=2, sampler='ddim', num_steps=int(e['ddim_steps']), eta=0.0,
                  clip_x0=False, spacing='leading', noise=e['ddim_noise'],
                  labels=labels, guidance_scale=None if labels is None else 1.0)
  assert np.abs(x - e['ddim_out']).max() < 1e-4 * max(1.0, np.abs(e['ddim_out']).max())


def test_the_scheduler_and_architecture_fields(imported):
  c = load(imported['attn_many_classes']).config
  assert (c.model.ch, tuple(c.model.ch_mult), c.model.num_res_blocks) == (8, (1, 2, 2), 2)
  assert tuple(c.model.attn_resolutions) == (16, 4)
  assert (c.model.attn_head_dim, c.model.downsample_padding, c.model.norm_eps) == (4, 1, 1e-5)
  assert c.data.num_classes == 3 and c.model.class_conditional
  assert (c.diffusion.schedule, c.diffusion.prediction, c.diffusion.num_timesteps) == ('cosine', 'v', 200)
  assert (c.sampling.var_type, c.sampling.clip_x0) == ('fixedsmall', False)
  c = load(imported['scaled_linear_sample']).config
  assert (c.diffusion.schedule, c.diffusion.prediction) == ('scaled_linear', 'x0')


def test_export_then_import_round_trips_bit_for_bit(imported, tmp_path):
  for name in ('ddpm_attn_one', 'attn_many_classes'):
    out = tmp_path / name
    paths = df.export_workdir(imported[name], str(out))
    assert [os.path.basename(p) for p in paths] == ['config.json', df.WEIGHTS,
                                                    'scheduler_config.json']
    theirs = load_file(os.path.join(FIXTURES, name, df.WEIGHTS))
    ours = load_file(str(out / df.WEIGHTS))
    assert sorted(ours) == sorted(theirs)
    for k, v in theirs.items():
      if k == 'class_embedding.weight':   # + our null row (zeros on import)
        assert np.array_equal(ours[k][:-1], v) and not ours[k][-1].any()
      elif k == 'time_embedding.linear_1.weight' and original_flip(name):
        half = v.shape[1] // 2          # exported as [sin, cos]: columns swapped
        assert np.array_equal(ours[k], np.concatenate([v[:, half:], v[:, :half]], 1))
      else:
        assert np.array_equal(ours[k], v), k
    config = json.loads((out / 'config.json').read_text())
    original = json.loads(open(os.path.join(FIXTURES, name, 'config.json')).read())
    for k in ('block_out_channels', 'layers_per_block', 'down_block_types',
              'up_block_types', 'norm_num_groups', 'norm_eps', 'attention_head_dim',
              'downsample_padding', 'sample_size', 'in_channels'):
      assert config[k] == original[k], k
    again = str(tmp_path / f'{name}_again')
    df.import_folder(str(out), again)
    a, b = load(imported[name]).params, load(again).params
    assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))
  with pytest.raises(UserError, match='config.json exists; pass overwrite=True'):
    df.export_workdir(imported['ddpm_attn_one'], str(tmp_path / 'ddpm_attn_one'))


def original_flip(name):
  with open(os.path.join(FIXTURES, name, 'config.json')) as f:
    return json.load(f)['flip_sin_to_cos']


def _edited(tmp_path, name, unet=None, scheduler=None, tag=''):
  folder = tmp_path / f'edited_{name}{tag}'
  shutil.copytree(os.path.join(FIXTURES, name), folder)
  for file, change in (('config.json', unet), ('scheduler_config.json', scheduler)):
    if change:
      d = json.loads((folder / file).read_text())
      d.update(change)
      (folder / file).write_text(json.dumps(d))
  return str(folder)


@pytest.mark.parametrize('change, message', [
    (dict(resnet_time_scale_shift='scale_shift'),
     'config.json: resnet_time_scale_shift="scale_shift" cannot be represented'),
    (dict(up_block_types=['UpBlock2D', 'UpBlock2D']),
     'attention must sit at the same levels'),
    (dict(down_block_types=['DownBlock2D', 'CrossAttnDownBlock2D']), 'down_block_types='),
    (dict(mid_block_scale_factor=1.414), 'mid_block_scale_factor=1.414'),
    (dict(attention_head_dim=5), 'attention_head_dim=5 cannot be represented'),
    (dict(block_out_channels=[8, 24]), r'tensor for .* has shape \(.*\), the model needs'),
])
def test_what_our_unet_cannot_represent_is_one_line(tmp_path, change, message):
  src = _edited(tmp_path, 'ddpm_attn_one', unet=change)
  pattern = message if message.startswith('tensor') else (
      message.replace('[', r'\[').replace('(', r'\('))
  with pytest.raises(UserError, match=pattern):
    df.import_folder(src, str(tmp_path / 'wd'))
  assert not (tmp_path / 'wd').exists()


def test_scheduler_fields_and_bad_folders(tmp_path):
  betas = np.linspace(1e-4, 0.05, 100)
  src = _edited(tmp_path, 'ddpm_attn_one', scheduler=dict(trained_betas=betas.tolist()))
  df.import_folder(src, str(tmp_path / 'a'))
  pipe = load(str(tmp_path / 'a'))
  assert pipe.config.diffusion.schedule == 'trained'
  np.testing.assert_allclose(np.asarray(builders.schedule_from_config(pipe.config).betas),
                             betas, rtol=1e-6)
  df.export_workdir(str(tmp_path / 'a'), str(tmp_path / 'a_out'))
  exported = json.loads((tmp_path / 'a_out' / 'scheduler_config.json').read_text())
  assert exported['trained_betas'] == betas.tolist()
  src = _edited(tmp_path, 'ddpm_attn_one', scheduler=dict(trained_betas=[0.1] * 7), tag='short')
  with pytest.raises(UserError, match='trained_betas=.* it needs num_train_timesteps=100 values'):
    df.import_folder(src, str(tmp_path / 'a2'))
  src = _edited(tmp_path, 'attn_many_classes', scheduler=dict(variance_type='learned'))
  with pytest.raises(UserError, match='variance_type="learned" is not supported'):
    df.import_folder(src, str(tmp_path / 'b'))
  with pytest.raises(UserError, match='does not exist'):
    df.import_folder(str(tmp_path / 'nothing'), str(tmp_path / 'c'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(UserError, match='holds neither config.json'):
    df.import_folder(str(empty), str(tmp_path / 'd'))
  try:
    import torch  # noqa: F401
  except ImportError:   # the suite's venv: a .bin alone is refused safely
    with pytest.raises(UserError, match='has only diffusion_pytorch_model.bin, a '
                       'PyTorch pickle: install torch'):
      df.import_folder(os.path.join(FIXTURES, 'legacy_bin'), str(tmp_path / 'e'))
  broken = _edited(tmp_path, 'ddpm_attn_one', tag='broken')
  with open(os.path.join(broken, df.WEIGHTS), 'r+b') as f:
    f.truncate(1000)
  with pytest.raises(UserError, match='cannot read .*safetensors'):
    df.import_folder(broken, str(tmp_path / 'f'))


def test_noise_argument_is_checked(imported):
  pipe = load(imported['ddpm_attn_one'])
  with pytest.raises(UserError, match=r'noise has shape \(3, 8, 8, 1\); this request starts from \(2, 8, 8, 1\)'):
    pipe.sample(num=2, noise=np.zeros((3, 8, 8, 1)))
  with pytest.raises(UserError, match='NaN'):
    pipe.sample(num=1, noise=np.full((1, 8, 8, 1), np.nan))
  a = pipe.sample(num=2, seed=0, sampler='ddim', num_steps=5, noise=np.ones((2, 8, 8, 1)))
  b = pipe.sample(num=2, seed=7, sampler='ddim', num_steps=5, noise=np.ones((2, 8, 8, 1)))
  assert np.array_equal(a, b)    # deterministic sampler, same start: same images


def test_the_commands_import_sample_fine_tune_and_export(tmp_path):
  run = lambda *a: subprocess.run([sys.executable, *a], capture_output=True,
                                  text=True, timeout=600, cwd=tmp_path)
  wd = str(tmp_path / 'wd')
  r = run('-m', 'ddpm_jax.cli.import_diffusers', os.path.join(FIXTURES, 'ddpm_attn_one'),
          f'--workdir={wd}', '--config=tiny')
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.startswith(f'imported {FIXTURES}/ddpm_attn_one into {wd} (checkpoint 0)')
  r = run(os.path.join(REPO, 'sample.py'), f'--workdir={wd}', '--num=4', '--out=s.png')
  assert r.returncode == 0, r.stderr[-3000:]
  r = run(os.path.join(REPO, 'train.py'), f'--workdir={wd}', '--config.training.num_steps=2')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'resuming from checkpoint at step 0' in r.stdout and 'done: step 2' in r.stdout
  r = run('-m', 'ddpm_jax.cli.export_diffusers', f'--workdir={wd}', '--out=exported')
  assert r.returncode == 0, r.stderr[-3000:]
  assert (tmp_path / 'exported' / df.WEIGHTS).exists()
  r = run('-m', 'ddpm_jax.cli.import_diffusers', os.path.join(FIXTURES, 'ddpm_attn_one'),
          f'--workdir={wd}')
  assert r.returncode == 2 and r.stderr.startswith(f'error: {wd} already holds checkpoints')
