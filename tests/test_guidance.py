"""Class guidance, img2img and inpainting through the public Pipeline."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import train_zero_one, untrained_pipeline
from ddpm_jax.errors import UserError


def _pipeline(config, wrap=None, edit_reconstruction=0.0, edit_infer_label=False):
  """An untrained pipeline; its unconditional edits skip reconstruction
  guidance (a backward pass to compile) and label inference (a second pass)
  unless a test is about them (None: the config's)."""
  if edit_reconstruction is not None:
    config.sampling.edit_reconstruction = edit_reconstruction
  if edit_infer_label is not None:
    config.sampling.edit_infer_label = edit_infer_label
  return untrained_pipeline(config, lambda p: jax.tree.map(lambda v: v + 0.02, p),
                            wrap)


@pytest.fixture
def cond_config(tiny_config):
  tiny_config.model.class_conditional = True
  return tiny_config


def test_guidance_scale_0_and_1_reproduce_the_two_branches(cond_config):
  pipe = _pipeline(cond_config)
  kw = dict(num=4, seed=1, sampler='ddim', num_steps=10)
  uncond = pipe.sample(**kw)                       # null label
  cond = pipe.sample(labels=[3], **kw)
  w0 = pipe.sample(labels=[3], guidance_scale=0.0, **kw)
  w1 = pipe.sample(labels=[3], guidance_scale=1.0, **kw)
  assert not np.allclose(uncond, cond)
  np.testing.assert_allclose(w0, uncond, atol=1e-5)
  np.testing.assert_allclose(w1, cond, atol=1e-5)


def test_no_recompile_when_seed_label_or_scale_change(cond_config):
  pipe = _pipeline(cond_config, wrap=lambda f: chex.assert_max_traces(f, n=1))
  for seed, label, w in [(0, 1, 2.0), (1, 5, 2.0), (2, 9, 3.5)]:
    pipe.sample(num=4, seed=seed, labels=[label], guidance_scale=w,
                sampler='ddim', num_steps=5)


def test_img2img_strength_0_returns_the_input_and_1_is_generation(tiny_config):
  pipe = _pipeline(tiny_config)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
  np.testing.assert_array_equal(pipe.sample(num=2, init_image=x, strength=0.0), x)
  gen = pipe.sample(num=2, seed=4, sampler='ddim', num_steps=10)
  full = pipe.sample(num=2, seed=4, sampler='ddim', num_steps=10, init_image=x,
                     strength=1.0)
  np.testing.assert_allclose(full, gen, atol=1e-6)
  half = pipe.sample(num=2, seed=4, sampler='ddim', num_steps=10, init_image=x,
                     strength=0.5)
  assert np.abs(half - x).mean() < np.abs(gen - x).mean()


def test_inpainting_keeps_the_known_pixels(tiny_config):
  pipe = _pipeline(tiny_config)
  x = np.random.default_rng(1).uniform(-1, 1, (8, 8, 1)).astype(np.float32)
  mask = np.zeros((8, 8, 1), np.float32)
  mask[2:6, 2:6] = 1.0                       # regenerate the centre
  for sampler in ('ddpm', 'ddim', 'dpm++2m'):
    out = pipe.sample(num=3, seed=0, sampler=sampler, num_steps=10,
                      init_image=x, mask=mask)
    known = mask[..., 0] == 0
    np.testing.assert_array_equal(out[:, known], np.broadcast_to(x, out.shape)[:, known])
    assert not np.allclose(out[:, ~known], x[~known])


@pytest.mark.parametrize('kwargs, message', [
    (dict(guidance_scale=2.0, labels=[1]), 'needs a class- or text-conditioned model'),
    (dict(labels=[1]), 'labels need a class-conditional model'),
    (dict(strength=1.5, init_image=np.zeros((8, 8, 1))), r'strength must be a finite number in \[0, 1\]'),
    (dict(init_image=np.zeros((8, 8, 1)), mask=np.zeros((6, 6, 1))), 'mask has shape'),
    (dict(init_image=np.zeros((9, 9, 1)), strength=0.5), 'init_image has shape'),
    (dict(num_steps=51), r'must be in \[1, 50\]'),
    (dict(sampler='euler_b'), 'sampler must be one of'),
    (dict(mask=np.zeros((8, 8, 1))), 'need an init image'),
    (dict(outpaint=(2, 2, 2, 2)), 'need an init image'),
    (dict(init_image=np.zeros((8, 8, 1)), outpaint=(2, -2, 2, 2)),
     'margins must be non-negative, got 2,-2,2,2'),
    (dict(init_image=np.zeros((8, 8, 1)), outpaint=(0, 0, 0, 0)), 'nothing to generate'),
    (dict(init_image=np.zeros((8, 8, 1)), outpaint=(2, 2)), 'four integer margins'),
    (dict(init_image=np.zeros((8, 8, 1)), outpaint=(1, 0, 0, 0)),
     r'canvas 8x9 cannot be halved 1 times .* multiples of 2\); the nearest size '
     'that works is 8x10, e.g. outpaint 1,0,1,0'),
    (dict(init_image=np.zeros((8, 8, 1)), outpaint=(0, 1, 2, 0), strength=0.5),
     'use one of strength'),
])
def test_bad_combinations_on_an_unconditional_model(tiny_config, kwargs, message):
  pipe = _pipeline(tiny_config)
  with pytest.raises(UserError, match=message):
    pipe.sample(num=2, **kwargs)


def test_label_outside_the_classes(cond_config):
  pipe = _pipeline(cond_config)
  with pytest.raises(UserError, match=r'labels must be in \[0, 9\]'):
    pipe.sample(num=2, labels=[10])
  with pytest.raises(UserError, match='guidance scale needs labels'):
    pipe.sample(num=2, guidance_scale=2.0)


@pytest.mark.slow
def test_trained_conditional_model_draws_the_requested_class(cond_config):
  """Two classes (0 and 1) at 8x8: a logistic-regression classifier trained
  here on real images must recognise the requested class far above chance."""
  c = cond_config
  c.data.num_classes = 2
  c.training.batch_size = 32
  c.training.learning_rate = 3e-3
  c.training.warmup_steps = 20
  c.training.ema_decay = 0.99
  c.model.dropout = 0.0
  pipe, classify = train_zero_one(c, 300)
  x = pipe.sample(num=64, seed=0, labels=[0, 1], guidance_scale=4.0)
  acc = np.mean(classify(x) == np.repeat([0, 1], 32))
  assert acc > 0.75, acc  # chance is 0.5; measured 0.86 when written


def test_repaint_schedule_and_jumps_keep_known_pixels(tiny_config):
  from ddpm_jax.sampling import repaint_schedule
  idx, up = repaint_schedule(25, jumps=2, jump_length=10)
  down = idx[~up]
  assert list(idx[:10]) == list(range(24, 14, -1)) and not up[:10].any()
  assert list(idx[10:20]) == list(range(15, 25)) and up[10:20].all()
  assert down[-1] == 0 and (idx[-5:] == [4, 3, 2, 1, 0]).all()  # last block: no jump
  assert len(down) == 25 + 2 * 20 and up.sum() == 2 * 20
  pipe = _pipeline(tiny_config)
  x = np.random.default_rng(2).uniform(-1, 1, (8, 8, 1)).astype(np.float32)
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:, 4:] = 1.0
  plain = pipe.sample(num=2, seed=0, sampler='ddpm', num_steps=20, init_image=x, mask=mask)
  jumped = pipe.sample(num=2, seed=0, sampler='ddpm', num_steps=20, init_image=x,
                       mask=mask, jumps=2)
  np.testing.assert_array_equal(jumped[:, :, :4], np.broadcast_to(x, jumped.shape)[:, :, :4])
  assert not np.allclose(jumped, plain)
  # every sampler resamples: σ-samplers go up their own σ grid, DPM++ 2M
  # restarts its history after each jump
  for name in ('euler_a', 'dpm++2m', 'heun'):
    plain = pipe.sample(num=2, seed=0, sampler=name, num_steps=20,
                        init_image=x, mask=mask)
    jumped = pipe.sample(num=2, seed=0, sampler=name, num_steps=20,
                         init_image=x, mask=mask, jumps=1)
    np.testing.assert_array_equal(jumped[:, :, :4],
                                  np.broadcast_to(x, jumped.shape)[:, :, :4])
    assert np.all(np.isfinite(jumped)) and not np.allclose(jumped, plain), name


def test_sampling_in_batches(cond_config):
  """num > batch: several calls of one compiled scan; the first batch is the
  images of a run of that size with the same seed; labels follow the images."""
  pipe = _pipeline(cond_config)
  kw = dict(seed=3, sampler='ddim', num_steps=5, labels=[1, 2, 3, 4, 5], guidance_scale=2.0)
  a = pipe.sample(num=5, batch_size=2, **kw)
  assert a.shape == (5, 8, 8, 1) and np.isfinite(a).all()
  b = pipe.sample(num=2, **{**kw, 'labels': [1, 2]})
  np.testing.assert_array_equal(a[:2], b)
  assert not np.allclose(a[2:4], b)
  with pytest.raises(UserError, match='batch_size must be an integer >= 1'):
    pipe.sample(num=2, batch_size=0)


def test_sample_command_draws_every_class_at_the_config_guidance(cond_config, tmp_path,
                                                                 monkeypatch):
  """write_samples (sample.py) on a class-conditional model without --label:
  classes in turn, sorted into one row per class when they divide --num, at
  the config's sampling.guidance_scale."""
  from ddpm_jax import pipeline
  from ddpm_jax.train.loop import train
  cond_config.training.num_steps = 2
  cond_config.sampling.guidance_scale = 1.5
  train(cond_config, str(tmp_path / 'wd'), progress=False)
  seen = []
  real_request = pipeline.Pipeline.request

  def spy(self, num, seed, **kw):
    req = real_request(self, num, seed, **kw)
    seen.append((num, list(kw['labels']), req.scale))
    return req
  monkeypatch.setattr(pipeline.Pipeline, 'request', spy)
  for num in (20, 7):
    pipeline.write_samples(str(tmp_path / 'wd'), str(tmp_path / f'{num}.png'),
                           num=num, progress=False, sampler='ddim', num_steps=3)
  assert seen[0] == (20, [i // 2 for i in range(20)], 1.5)   # rows of 2 per class
  assert seen[1] == (7, list(range(7)), 1.5)
  before = (tmp_path / '7.png').read_bytes()   # an existing grid: replaced
  pipeline.write_samples(str(tmp_path / 'wd'), str(tmp_path / '7.png'), num=7,
                         seed=1, progress=False, sampler='ddim', num_steps=3,
                         overwrite=True)        # only when told
  assert (tmp_path / '7.png').read_bytes() != before


def test_sigma_samplers_compose_with_guidance_img2img_and_inpainting(cond_config):
  """A v-model (the default's target; the σ-samplers ask it at float t)."""
  cond_config.diffusion.prediction = 'v'
  pipe = _pipeline(cond_config)
  x = np.random.default_rng(0).uniform(-1, 1, (8, 8, 1)).astype(np.float32)
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:, 4:] = 1.0
  for name in ('euler', 'euler_a', 'heun', 'dpm2', 'dpm++2m'):
    kw = dict(num=2, seed=3, sampler=name, num_steps=8, spacing='karras',
              labels=[1], guidance_scale=2.0)
    a = pipe.sample(**kw)
    np.testing.assert_array_equal(a, pipe.sample(**kw))       # same seed, same images
    assert np.all(np.isfinite(a))
    if name not in ('euler_a', 'heun'):
      continue
    edit = pipe.sample(**kw, init_image=x, strength=0.5)
    assert np.all(np.isfinite(edit)) and not np.allclose(edit, a)
    fill = pipe.sample(**kw, init_image=x, mask=mask)
    np.testing.assert_allclose(fill[:, :, :4], np.broadcast_to(x, fill.shape)[:, :, :4],
                               atol=1e-6)


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim', 'dpm++2m', 'euler', 'heun'])
def test_outpainting_keeps_the_image_and_generates_the_border(tiny_config, sampler):
  pipe = _pipeline(tiny_config)
  x = np.random.default_rng(2).uniform(-1, 1, (8, 8, 1)).astype(np.float32)
  out = pipe.sample(num=2, seed=0, sampler=sampler, num_steps=6, init_image=x,
                    outpaint=(2, 0, 4, 2))         # L, T, R, B
  assert out.shape == (2, 10, 14, 1)
  np.testing.assert_array_equal(out[:, 0:8, 2:10], np.broadcast_to(x, (2, 8, 8, 1)))
  border = np.ones((10, 14), bool)
  border[0:8, 2:10] = False
  assert np.all(np.isfinite(out)) and np.abs(out[:, border]).min(axis=1).max() > 0
  assert not np.allclose(out[0, border], out[1, border])  # each image its own border


def test_outpainting_an_image_of_another_size_with_jumps(tiny_config):
  """The init image need not have the model's size: only the canvas must halve."""
  pipe = _pipeline(tiny_config)
  x = np.random.default_rng(3).uniform(-1, 1, (10, 14, 1)).astype(np.float32)
  out = pipe.sample(num=1, seed=0, sampler='ddim', num_steps=10, init_image=x,
                    outpaint=(1, 1, 1, 1), jumps=1)
  assert out.shape == (1, 12, 16, 1)
  np.testing.assert_array_equal(out[0, 1:11, 1:15], x)


_WRONG = [  # (argument, a wrong type, a wrong value) of Pipeline.sample
    ('num', 2.5, 0), ('seed', 'a', None), ('sampler', 3, 'plms'),
    ('num_steps', 2.7, 0), ('labels', [1.5], [10]), ('guidance_scale', '2', float('nan')),
    ('strength', '0.5', 1.5), ('eta', 'x', -1.0), ('clip_x0', 'no', None),
    ('spacing', 1, 'karas'), ('jumps', 1.5, -1), ('capture_every', 1.5, -1),
    ('batch_size', 1.5, 0), ('paste_known', 'yes', None),
    ('return_frames', 1, None), ('init_image', 'digit.png', np.full((8, 8), 2.0)),
    ('mask', 'mask.png', -np.ones((8, 8))),
    ('reconstruction', 'x', -1.0)]


@pytest.mark.parametrize('name, wrong_type, wrong_value', _WRONG,
                         ids=[w[0] for w in _WRONG])
def test_every_argument_is_checked_by_type_and_range(cond_config, name, wrong_type,
                                                     wrong_value):
  pipe = _pipeline(cond_config)
  base = dict(num=2, sampler='ddim', num_steps=2)
  if name in ('strength', 'init_image'):
    base.update(init_image=np.zeros((8, 8, 1), np.float32), strength=0.5)
  if name in ('mask', 'jumps', 'paste_known', 'reconstruction'):
    base.update(init_image=np.zeros((8, 8, 1), np.float32),
                mask=np.ones((8, 8, 1), np.float32))
  if name == 'labels':
    base['guidance_scale'] = 2.0
  for value in (wrong_type, wrong_value):
    if value is None:
      continue
    with pytest.raises(UserError, match=rf'^{name} (must|has)') as e:
      pipe.sample(**{**base, name: value})
    assert '\n' not in str(e.value)


def test_load_checks_its_arguments(tmp_path):
  from ddpm_jax.pipeline import load
  for kwargs, message in [(dict(workdir=None), 'workdir must be a path'),
                          (dict(workdir=str(tmp_path), step='3'), 'step must be an integer'),
                          (dict(workdir=str(tmp_path), step=-1), 'step must be an integer >= 0'),
                          (dict(workdir=str(tmp_path), use_ema='no'), 'use_ema must be True or False'),
                          (dict(workdir=str(tmp_path / 'x')), 'does not exist')]:
    with pytest.raises(UserError, match=message):
      load(**kwargs)


def test_uint8_and_pil_inputs_work_like_their_float_forms(tiny_config):
  from PIL import Image
  pipe = _pipeline(tiny_config)
  u8 = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
  as_float = u8.astype(np.float32) / 127.5 - 1.0
  kw = dict(num=2, seed=1, sampler='ddim', num_steps=4)
  mask_u8 = np.zeros((8, 8), np.uint8)
  mask_u8[:, 4:] = 255
  want = pipe.sample(init_image=as_float, mask=(mask_u8 / 255.0)[..., None], **kw)
  np.testing.assert_array_equal(pipe.sample(init_image=u8, mask=mask_u8, **kw), want)
  np.testing.assert_array_equal(
      pipe.sample(init_image=Image.fromarray(u8[..., 0]),
                  mask=Image.fromarray(mask_u8), **kw), want)
  # the known pixels come back as given (uint8 0..255 -> [-1, 1])
  np.testing.assert_array_equal(want[:, :, :4], np.broadcast_to(as_float[:, :4], (2, 8, 4, 1)))
  with pytest.raises(UserError, match=r'init_image has shape \(8, 6\); this model takes 8x8'):
    pipe.sample(init_image=np.zeros((8, 8), np.float32)[:, :6], strength=0.5, num=1)
  with pytest.raises(UserError, match=r'init_image has shape \(3, 8, 8, 1\): 3 images for num=2'):
    pipe.sample(init_image=np.zeros((3, 8, 8, 1), np.float32), strength=0.5, num=2)


def test_distinct_seeds_give_distinct_images(tiny_config):
  pipe = _pipeline(tiny_config)
  kw = dict(num=1, sampler='ddim', num_steps=3)
  images = [pipe.sample(seed=s, **kw) for s in (0, 2 ** 32, -1, 2 ** 32 - 1, 10 ** 30)]
  for i in range(len(images)):
    for j in range(i):
      assert not np.array_equal(images[i], images[j]), (i, j)


def test_edits_take_the_editing_defaults_and_the_null_label(cond_config):
  """Inpainting and outpainting take sampling.edit_* for what they are not
  given (docs/results/editing.md chose them); without labels an edit is
  unconditional, not a cycle of classes."""
  pipe = _pipeline(cond_config, edit_reconstruction=None, edit_infer_label=None)
  s = cond_config.sampling
  x = np.zeros((8, 8, 1), np.float32)
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:, 4:] = 1
  req = pipe.request(4, 0, init_image=x, mask=mask)   # unconditional first
  a = dict(req.fn_args)
  assert (a['sampler'], a['num_steps'], a['jumps'], a['reconstruction']) == (
      s.edit_sampler, s.edit_num_steps, 0, s.edit_reconstruction) == (
          'euler_a', 20, 0, 20.0)
  assert (req.y == pipe.num_classes).all() and req.scale is None
  # ... then again with the labels the model infers: the conditional model
  # (guidance scale 1) with the same reconstruction guidance
  assert s.edit_infer_label is True and req.labelled is not None
  a = dict(req.labelled.fn_args)
  assert (a['sampler'], a['jumps'], a['reconstruction']) == ('euler_a', 0, 20.0)
  assert req.labelled.scale is None   # w = 1: the conditional model alone
  assert (req.labelled.y == 0).all() and req.labelled.labelled is None
  req = pipe.request(4, 0, init_image=x, mask=mask, guidance_scale=2.0,
                     reconstruction=0)   # the guidance scale is pass 2's
  assert req.scale is None and req.labelled.scale == 2.0
  a = dict(req.labelled.fn_args)
  assert (a['jumps'], a['reconstruction']) == (s.edit_jumps, 0.0)
  req = pipe.request(4, 0, init_image=x, mask=mask, capture_every=5, jumps=0)
  assert (dict(req.fn_args)['capture_every'],
          dict(req.labelled.fn_args)['capture_every']) == (0, 5)  # frames: pass 2
  assert pipe.request(4, 0, init_image=x, mask=mask,
                      infer_label=False).labelled is None
  a = dict(pipe.request(4, 0, init_image=x, mask=mask, labels=[1]).fn_args)
  assert (a['sampler'], a['num_steps'], a['jumps'], a['reconstruction']) == (
      'euler_a', 20, s.edit_jumps, 0.0) and s.edit_jumps == 3
  a = dict(pipe.request(4, 0, init_image=x, mask=mask, reconstruction=0).fn_args)
  assert (a['jumps'], a['reconstruction']) == (3, 0.0)
  a = dict(pipe.request(4, 0, init_image=x, mask=mask, sampler='ddim',
                        jumps=0).fn_args)
  assert (a['sampler'], a['num_steps'], a['jumps']) == ('ddim', 20, 0)
  a = dict(pipe.request(4, 0, init_image=x, strength=0.5).fn_args)  # img2img: plain
  assert (a['sampler'], a['jumps'], a['reconstruction']) == (s.sampler, 0, 0.0)
  with pytest.raises(UserError, match='^reconstruction guidance needs a mask'):
    pipe.request(4, 0, init_image=x, strength=0.5, reconstruction=5.0)


def test_reconstruction_guidance_equals_its_float64_formula():
  """ε̃ = ε + ᾱ/(2√(1−ᾱ)) w ∇ₓ‖(1−m)(x₀ − x̂₀)‖² for a linear ε model, whose
  gradient is known in closed form, at every grid timestep of a sampler
  (its schedule is float32: the reference takes the same √ᾱ, √(1−ᾱ))."""
  import jax.numpy as jnp
  from ddpm_jax import samplers, schedules, sampling
  jax.config.update('jax_enable_x64', True)
  try:
    smp = samplers.make_sampler('ddim', schedules.get_betas('linear', 100), 10)
    rng = np.random.default_rng(0)
    A = rng.normal(0, 0.1, (12, 12))
    eps_fn = lambda x, t: (x.reshape(2, 12) @ A.T).reshape(x.shape)
    x0 = rng.normal(size=(2, 3, 4, 1))
    mask = (rng.uniform(size=(2, 3, 4, 1)) < 0.5).astype(np.float64)
    fn = sampling.reconstruction_eps_fn(eps_fn, smp, jnp.asarray(x0),
                                        jnp.asarray(mask), 7.0)
    for i, t in enumerate(smp.timesteps):   # the schedule's own √ᾱ, √(1−ᾱ)
      a = float(smp.schedule.sqrt_alphas_cumprod[i])
      s = float(smp.schedule.sqrt_one_minus_alphas_cumprod[i])
      x = rng.normal(size=(2, 3, 4, 1))
      eps = eps_fn(x, None)
      x0_hat = (x - s * eps) / a
      r = ((1 - mask) * (x0 - x0_hat)).reshape(2, 12)
      # d x̂0 / d x = (I − √(1−ᾱ) A) / √ᾱ ; ∇ = −2 (d x̂0/dx)ᵀ r
      J = (np.eye(12) - s * A) / a
      grad = (-2 * r @ J).reshape(x.shape)
      want = eps + a * a / (2 * s) * 7.0 * grad
      got = fn(jnp.asarray(x), jnp.full((2,), t))
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
  finally:
    jax.config.update('jax_enable_x64', False)


def test_reconstruction_guidance_keeps_the_known_pixels_and_steers_the_rest(
    tiny_config):
  pipe = _pipeline(tiny_config)
  x = np.random.default_rng(1).uniform(-1, 1, (8, 8, 1)).astype(np.float32)
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:, 4:] = 1.0
  known = mask[..., 0] == 0
  for sampler in ('euler_a', 'ddim'):
    kw = dict(num=3, seed=0, sampler=sampler, num_steps=10, init_image=x,
              mask=mask)
    plain = pipe.sample(reconstruction=0.0, **kw)
    guided = pipe.sample(reconstruction=20.0, **kw)
    np.testing.assert_array_equal(guided[:, known],
                                  np.broadcast_to(x, guided.shape)[:, known])
    assert np.all(np.isfinite(guided))
    assert not np.allclose(guided[:, ~known], plain[:, ~known])


def test_class_errors_equal_their_float64_formula():
  """With a model that predicts ε exactly when x0 is class k's template, the
  error of class k is ᾱ/(1−ᾱ) ‖known ⊙ (x0 − template_k)‖², whatever the
  noise; the known pixels alone decide."""
  from ddpm_jax import sampling, schedules
  betas = schedules.get_betas('linear', 1000)
  arr = schedules.schedule_arrays_np(betas)
  rng = np.random.default_rng(0)
  templates = rng.uniform(-1, 1, (4, 6, 6, 1))

  def apply(params, x_t, t_B, y_B):
    a = jnp.sqrt(jnp.asarray(arr['alphas_cumprod'], jnp.float32))[t_B]
    s = jnp.sqrt(1 - jnp.asarray(arr['alphas_cumprod'], jnp.float32))[t_B]
    tmpl = jnp.asarray(templates, jnp.float32)[y_B]
    return (x_t - a[:, None, None, None] * tmpl) / s[:, None, None, None]
  known = np.zeros((2, 6, 6, 1))
  known[:, :, :3] = 1
  x0 = np.where(known > 0, templates[[2, 1]], templates[[3, 3]])
  fn = sampling.make_class_error_fn(apply, schedules.make_schedule(betas), 4,
                                    num_levels=5, draws=2)
  err = np.asarray(fn(None, jax.random.key(0), jnp.asarray(x0, jnp.float32),
                      jnp.asarray(known, jnp.float32)))
  t = np.round(np.linspace(0.2, 0.8, 5) * 999).astype(int)
  snr = (arr['alphas_cumprod'] / (1 - arr['alphas_cumprod']))[t].mean()
  want = snr * np.square(known[:, None] * (x0[:, None] - templates[None])
                         ).sum((2, 3, 4))
  np.testing.assert_allclose(err, want, rtol=2e-3, atol=1e-3)
  assert list(err.argmin(1)) == [2, 1]


def test_an_unlabeled_edit_infers_its_labels_then_completes_with_them(cond_config):
  """The default unlabeled edit of a class-conditional model equals its two
  steps done by hand: an unconditional pass, infer_labels on it, the same
  pass with those labels at guidance scale 1. infer_label is checked."""
  pipe = _pipeline(cond_config, edit_infer_label=True)
  x = np.random.default_rng(2).uniform(-1, 1, (8, 8, 1)).astype(np.float32)
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:, 4:] = 1
  kw = dict(num=3, seed=5, init_image=x, mask=mask, num_steps=10)
  out = pipe.sample(**kw)
  # the second pass differs from the first only in its labels: one function
  sample_fns = [k for k in pipe._cache if k != 'class_errors']
  assert sample_fns == [pipe.request(**kw).labelled.fn_args + (('batch', 3),)]
  first = pipe.sample(infer_label=False, **kw)
  labels = pipe.infer_labels(first, 1 - mask, seed=5)
  assert labels.shape == (3,) and labels.min() >= 0 and labels.max() < 10
  with pytest.raises(UserError, match='known_BHWC has shape'):
    pipe.infer_labels(first, np.ones((8, 8)))
  with pytest.raises(UserError, match='x_BHWC holds NaN'):
    pipe.infer_labels(np.full_like(first, np.nan), 1 - mask)
  np.testing.assert_array_equal(
      out, pipe.sample(labels=labels, guidance_scale=1.0, **kw))
  np.testing.assert_array_equal(out[:, :, :4], np.broadcast_to(x[:, :4], (3, 8, 4, 1)))
  for extra, message in [
      (dict(labels=[1], infer_label=True), 'give labels or infer_label, not both'),
      (dict(infer_label='yes'), 'infer_label must be True or False'),
      (dict(mask=None, strength=0.5, infer_label=True), 'needs a mask or outpaint')]:
    with pytest.raises(UserError, match=message):
      pipe.request(**{**kw, **extra})
  plain = cond_config.copy_and_resolve_references()
  plain.model.class_conditional = False
  with pytest.raises(UserError, match='needs a class-conditional pixel model'):
    _pipeline(plain).request(infer_label=True, **kw)
