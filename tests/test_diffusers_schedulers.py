"""diffusers' schedulers as Samplers (ddpm_jax/diffusers_schedulers.py)
against what diffusers itself ran on the tiny SD pipelines of
tests/fixtures/sd/ (make_sd_fixtures.py): the grids, the whole
text-to-image latent loop with classifier-free guidance for DDIM, Euler,
Euler ancestral and DPM++ 2M Karras, and img2img through
sampling.make_sample_fn. No torch: the fixtures hold diffusers' numbers."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from conftest import REPO
from ddpm_jax import sampling
from ddpm_jax.clip_tokenizer import ClipTokenizer
from ddpm_jax.diffusers_schedulers import (DiffusersSampler, diffusers_sampler,
                                           img2img_start)
from ddpm_jax.models import sd_unet, sd_vae
from ddpm_jax.models.clip import ClipTextModel, params_from_transformers

SD = os.path.join(REPO, 'tests', 'fixtures', 'sd')
CASES = ['sd1', 'sd2']
# fixture name -> (our name, karras)
SCHEDULERS = {'ddim': ('ddim', False), 'euler': ('euler', False),
              'euler_a': ('euler_a', False), 'dpmpp_karras': ('dpm++2m', True)}


def _config(case: str) -> dict:
  with open(os.path.join(SD, case, 'scheduler', 'scheduler_config.json')) as f:
    return json.load(f)


def _ref(case: str):
  return np.load(os.path.join(SD, case, 'reference.npz'))


def _nhwc(a: np.ndarray) -> np.ndarray:
  return np.moveaxis(a, -3, -1)


def _rel(a, ref) -> float:
  return float(np.abs(np.asarray(a) - ref).max() / np.abs(ref).max())


def _sampler(case: str, s: str, ref=None) -> DiffusersSampler:
  cfg = _config(case)
  name, karras = SCHEDULERS[s]
  noise = None
  if s == 'euler_a' and ref is not None:
    noise = _nhwc(ref['euler_a_noise'])
  return diffusers_sampler(name, cfg, int(_ref(case)['pipe_steps']),
                           prediction=cfg['prediction_type'], karras=karras,
                           step_noise=noise)


# --- the grids ---------------------------------------------------------------

@pytest.mark.parametrize('s', list(SCHEDULERS))
@pytest.mark.parametrize('case', CASES)
def test_timesteps_and_sigmas_are_diffusers(case, s):
  ref = _ref(case)
  smp = _sampler(case, s)
  np.testing.assert_array_equal(smp.model_timesteps, ref[f'{s}_timesteps'])
  np.testing.assert_array_equal(smp.timesteps, ref[f'{s}_timesteps'][::-1])
  if s == 'ddim':
    assert smp.sigmas is None
    return
  # torch's float32 sqrt is not always correctly rounded: 1 ulp at most
  np.testing.assert_allclose(smp.sigmas, ref[f'{s}_sigmas'], rtol=2.5e-7, atol=0)
  # the schedule's ᾱ_i belongs to grid entry i: 1/(1 + σ_i²)
  ab = np.asarray(smp.schedule.alphas_cumprod)
  np.testing.assert_allclose(ab, 1 / (1 + ref[f'{s}_sigmas'][:-1][::-1].astype(
      np.float64) ** 2), rtol=1e-6)


def test_init_noise_sigma_follows_the_spacing():
  """Euler's init_noise_sigma is √(σ_max² + 1) with 'leading' spacing (sd1)
  but σ_max with 'trailing' (sd2); our x_T scale is its VP form."""
  sd1, sd2 = _sampler('sd1', 'euler'), _sampler('sd2', 'euler')
  s1, s2 = float(sd1.sigmas[0]), float(sd2.sigmas[0])
  assert sd1.init_noise_sigma == pytest.approx(np.sqrt(s1 ** 2 + 1), rel=1e-6)
  assert sd1.init_noise_scale == pytest.approx(1.0, rel=1e-6)
  assert sd2.init_noise_sigma == pytest.approx(s2, rel=1e-7)
  assert sd2.init_noise_scale == pytest.approx(s2 / np.sqrt(s2 ** 2 + 1), rel=1e-6)
  for s in ('ddim', 'dpmpp_karras'):
    assert _sampler('sd2', s).init_noise_scale == 1.0


# Grids diffusers 0.42.1 gives on sd1's DDIM config (leading, steps_offset 1)
# that differ between the classes; written down from diffusers itself.
SD1_GRIDS = [
    # DPM's 'leading' divides by n + 1 and drops the last point
    ('dpm++2m', False, 7, {}, [876, 751, 626, 501, 376, 251, 126],
     [7.371846675872803, 4.116698265075684, 2.510922431945801,
      1.6236929893493652, 1.0760315656661987, 0.6983985900878906,
      0.4022183120250702, 0.0]),
    # no timestep_spacing in the config: each class's default ('linspace')
    ('euler', False, 4, {'timestep_spacing': None}, [999.0, 666.0, 333.0, 0.0],
     [14.614646911621094, 2.9183084964752197, 0.9323583245277405,
      0.029167532920837402, 0.0]),
    # Euler's Karras ends are the spaced grid's ends; float timesteps
    ('euler', True, 4, {}, [751.0, 411.4153747558594, 69.40316009521484,
                            1.0000001192092896],
     [4.116698265075684, 1.2087777853012085, 0.27338722348213196,
      0.04131447896361351, 0.0]),
    ('ddim', False, 3, {'timestep_spacing': 'trailing'}, [999, 666, 332], None),
    ('ddim', False, 3, {'timestep_spacing': None}, [667, 334, 1], None),
    ('dpm++2m', False, 4, {'timestep_spacing': None}, [999, 749, 500, 250], None),
]


@pytest.mark.parametrize('name,karras,n,change,ts,sigmas', SD1_GRIDS)
def test_each_class_has_its_own_grid_rules(name, karras, n, change, ts, sigmas):
  cfg = {k: v for k, v in dict(_config('sd1'), **change).items() if v is not None}
  smp = diffusers_sampler(name, cfg, n, prediction='epsilon', karras=karras)
  np.testing.assert_allclose(smp.model_timesteps, np.float32(ts), rtol=3e-7)
  if sigmas is not None:
    np.testing.assert_allclose(smp.sigmas, np.float32(sigmas), rtol=2.5e-7)


def test_euler_karras_init_noise_sigma_with_leading_spacing():
  smp = diffusers_sampler('euler', _config('sd1'), 4, prediction='epsilon',
                          karras=True)
  assert smp.init_noise_sigma == pytest.approx(4.236413955688477, rel=1e-6)


@pytest.mark.parametrize('strength,n', [(0.6, 5), (0.5, 5), (0.7, 5), (0.29, 100),
                                        (1.0, 5), (0.05, 5), (0.99, 50)])
def test_img2img_start_is_diffusers_rule(strength, n):
  init_timestep = min(int(n * strength), n)   # diffusers' get_timesteps
  assert img2img_start(strength, n) == init_timestep - 1
  smp = diffusers_sampler('ddim', _config('sd1'), n, prediction='epsilon')
  assert smp.img2img_start(strength, n) == init_timestep - 1


def test_unsupported_settings_are_value_errors():
  cfg = _config('sd1')
  for bad in [lambda: diffusers_sampler('pndm', cfg, 5, prediction='epsilon'),
              lambda: diffusers_sampler('ddim', cfg, 5, prediction='eps'),
              lambda: diffusers_sampler('ddim', cfg, 5, prediction='epsilon',
                                        karras=True),
              lambda: diffusers_sampler('euler_a', cfg, 5, prediction='epsilon',
                                        karras=True),
              lambda: diffusers_sampler('euler', cfg, 5, prediction='epsilon',
                                        step_noise=np.zeros((5, 1))),
              lambda: diffusers_sampler('ddim', dict(cfg, thresholding=True), 5,
                                        prediction='epsilon'),
              lambda: diffusers_sampler('euler', dict(cfg, beta_schedule='cosine'),
                                        5, prediction='epsilon'),
              lambda: diffusers_sampler('dpm++2m', dict(cfg, solver_order=3), 5,
                                        prediction='epsilon'),
              lambda: diffusers_sampler('euler', cfg, 0, prediction='epsilon')]:
    with pytest.raises(ValueError):
      bad()


# --- the scan runs what a plain loop runs ---------------------------------

def _toy_eps(x, t):
  return 0.5 * x + 0.1 * jnp.cos(t * 0.013)[:, None, None, None]


@pytest.mark.parametrize('name,karras', [('ddim', False), ('euler', False),
                                         ('euler_a', False), ('dpm++2m', True),
                                         ('dpm++2m', False), ('heun', False)])
def test_sample_scans_what_the_step_loop_does(name, karras):
  cfg = _config('sd2')   # v-prediction, trailing
  x_T = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
  noise = (np.asarray(jax.random.normal(jax.random.key(1), (6, 1, 8, 8, 4)))
           if name == 'euler_a' else None)
  smp = diffusers_sampler(name, cfg, 6, prediction='v_prediction',
                          karras=karras, step_noise=noise)
  x, _ = smp.sample(_toy_eps, jax.random.key(2), x_T * smp.init_noise_scale)
  carry = smp.init_carry(x_T * smp.init_noise_scale)
  for i in range(smp.num_steps - 1, -1, -1):
    carry = smp.step(_toy_eps, carry, jnp.int32(i), jax.random.key(3))
  err = _rel(x, np.asarray(carry[0]))
  print(f'{name} karras={karras}: scan vs loop {err:.2e}')
  assert err < 1e-5


# --- the text-to-image loop on the fixtures' UNets ----------------------

def _diffusers_part(case: str, part: str, from_diffusers):
  """(config, graphdef, params) of a fixture's diffusers `part` folder."""
  d = os.path.join(SD, case, part)
  with open(os.path.join(d, 'config.json')) as f:
    cfg = json.load(f)
  return (cfg, *from_diffusers(
      cfg, load_file(os.path.join(d, 'diffusion_pytorch_model.safetensors'))))


def _guided(apply, ctx, w):
  """diffusers' guidance: the UNet on cat([negative, prompt]), then
  uncond + w (cond - uncond)."""
  @jax.jit
  def guided(params, x, t):
    out = apply(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]), ctx)
    uncond, cond = out[:1], out[1:]
    return uncond + jnp.float32(w) * (cond - uncond)
  return guided


@pytest.fixture(scope='module')
def pipes():
  """case -> (guided(x, t) jitted, params, prompt/negative contexts)."""
  out = {}
  for case in CASES:
    ref = _ref(case)
    tok = ClipTokenizer.from_folder(os.path.join(SD, case, 'tokenizer'))
    folder = os.path.join(SD, case, 'text_encoder')
    with open(os.path.join(folder, 'config.json')) as f:
      clip = ClipTextModel.from_config(json.load(f))
    nnx.update(clip, params_from_transformers(
        load_file(os.path.join(folder, 'model.safetensors')), clip))
    ids = tok([str(ref['pipe_negative_prompt']), str(ref['pipe_prompt'])])
    ctx = jax.jit(lambda ids: clip(ids))(ids)          # [uncond, cond]
    _, gd, params = _diffusers_part(case, 'unet', sd_unet.unet_from_diffusers)
    apply = sd_unet.make_unet_apply(gd)
    out[case] = (_guided(apply, ctx, float(ref['pipe_guidance_scale'])),
                 params, apply, ctx)
  return out


@pytest.mark.parametrize('s', list(SCHEDULERS))
@pytest.mark.parametrize('case', CASES)
def test_the_latent_loop_is_diffusers(pipes, case, s):
  guided, params, _, _ = pipes[case]
  ref = _ref(case)
  smp = _sampler(case, s, ref)
  eps_fn = lambda x, t: guided(params, x, t)
  carry = smp.init_carry(jnp.asarray(_nhwc(ref['pipe_latents'])) * smp.init_noise_scale)
  for i in range(smp.num_steps - 1, -1, -1):
    carry = smp.step(eps_fn, carry, jnp.int32(i), jax.random.key(0))
  err = _rel(carry[0], _nhwc(ref[f'{s}_latent']))
  print(f'{case} {s}: relative max-abs error {err:.2e}')
  assert err < 1e-4


@pytest.mark.parametrize('s', ['dpmpp_karras', 'euler'])
def test_the_jitted_sample_fn_is_diffusers(pipes, s):
  """sd2 (v-prediction, trailing) through make_sample_fn: guidance, the scan
  and `noise=` as diffusers' latents, which Euler scales by σ_max/√(σ_max² + 1)
  (init_noise_sigma σ_max in VP form)."""
  _, params, apply, ctx = pipes['sd2']
  ref = _ref('sd2')
  smp = _sampler('sd2', s)
  fn = sampling.make_sample_fn(apply, smp, (1, 16, 16, 4))
  x, _ = fn(params, jax.random.key(0), y=ctx[1:], scale=jnp.float32(7.5),
            y_null=ctx[:1], noise=jnp.asarray(_nhwc(ref['pipe_latents'])))
  err = _rel(x, _nhwc(ref[f'{s}_latent']))
  print(f'sd2 {s} via make_sample_fn: {err:.2e}')
  assert err < 1e-4


@pytest.mark.parametrize('case', CASES)
def test_img2img_is_diffusers(pipes, case):
  """DDIM img2img, strength 0.6, through make_sample_fn with a codec whose
  encoder draws diffusers' recorded posterior noise: Sampler.img2img_start
  agrees with diffusers here (3 of 5 steps)."""
  _, unet_params, apply, ctx = pipes[case]
  ref = _ref(case)
  vcfg, gd, vparams = _diffusers_part(case, 'vae', sd_vae.vae_from_diffusers)
  vae = sd_vae.make_vae_fns(gd)
  post = jnp.asarray(_nhwc(ref['img2img_posterior_noise']))
  sf = vcfg.get('scaling_factor', 0.18215)

  def encode(p, x):
    mean, logvar = vae.encode(p['vae'], 2.0 * x - 1.0)
    return (mean + jnp.exp(0.5 * logvar) * post) * sf

  codec = sampling.Codec(encode, lambda p, z: z, 8)   # decode: keep latents
  smp = _sampler(case, 'ddim')
  strength = float(ref['img2img_strength'])
  start = img2img_start(strength, smp.num_steps)
  assert start == 2   # and make_sample_fn takes the sampler's rule
  np.testing.assert_array_equal(smp.model_timesteps[smp.num_steps - 1 - start:],
                                ref['img2img_timesteps'])
  fn = sampling.make_sample_fn(lambda p, x, t, c: apply(p['unet'], x, t, c),
                               smp, (1, 16, 16, 4), strength=strength,
                               codec=codec)
  z, _ = fn({'unet': unet_params, 'vae': vparams}, jax.random.key(0),
            y=ctx[1:], scale=jnp.float32(ref['pipe_guidance_scale']),
            x_init=jnp.asarray(ref['img2img_image']), y_null=ctx[:1],
            noise=jnp.asarray(_nhwc(ref['img2img_noise'])))
  err = _rel(z, _nhwc(ref['img2img_latent']))
  print(f'{case} img2img: relative max-abs error {err:.2e}')
  assert err < 1e-4
