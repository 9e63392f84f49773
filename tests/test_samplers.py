import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, options, samplers, schedules
from ddpm_jax.errors import UserError
from ddpm_jax.sampling import make_sample_fn
from ddpm_jax.sharding import make_mesh
from ddpm_jax.train.step import init_train_state as init_model_and_state

BETAS = schedules.linear_betas(40, 1e-3, 0.2)


def toy_eps(x, t):
  """A fixed smooth 'model' so sampler maths can be checked without training."""
  return 0.5 * jnp.tanh(x) + 0.01 * t[:, None, None, None].astype(x.dtype)


def test_scan_equals_python_loop_of_the_same_step():
  smp = samplers.make_sampler('ddpm', BETAS)
  key = jax.random.key(0)
  x_T = jax.random.normal(jax.random.key(1), (3, 4, 4, 1))
  x_scan, _ = jax.jit(lambda k, x: smp.sample(toy_eps, k, x))(key, x_T)
  carry = smp.init_carry(x_T)
  step = jax.jit(lambda c, i: smp.step(toy_eps, c, i, jax.random.fold_in(key, i)))
  for i in range(smp.num_steps - 1, -1, -1):
    carry = step(carry, jnp.asarray(i))
  np.testing.assert_allclose(x_scan, carry[0], rtol=1e-5, atol=1e-5)


def test_ddpm_step_matches_algorithm_2_in_float64():
  smp = samplers.make_sampler('ddpm', BETAS, var_type='fixedsmall', clip_x0=False)
  x = np.random.default_rng(0).normal(size=(2, 3, 3, 1))
  i, key = 17, jax.random.key(3)
  (got,) = smp.step(toy_eps, (jnp.asarray(x, jnp.float32),), jnp.asarray(i), key)
  z = np.asarray(jax.random.normal(key, x.shape), np.float64)
  b = BETAS
  ab = np.cumprod(1 - b)
  eps = 0.5 * np.tanh(x) + 0.01 * i
  mean = (x - b[i] / np.sqrt(1 - ab[i]) * eps) / np.sqrt(1 - b[i])
  var = b[i] * (1 - ab[i - 1]) / (1 - ab[i])
  np.testing.assert_allclose(got, mean + np.sqrt(var) * z, rtol=1e-4, atol=1e-5)


def test_last_step_adds_no_noise():
  smp = samplers.make_sampler('ddpm', BETAS)
  x = jnp.ones((2, 3, 3, 1))
  a = smp.step(toy_eps, (x,), jnp.asarray(0), jax.random.key(0))[0]
  b = smp.step(toy_eps, (x,), jnp.asarray(0), jax.random.key(1))[0]
  np.testing.assert_array_equal(a, b)


def test_capture_every_k_steps():
  smp = samplers.make_sampler('ddpm', BETAS)  # 40 steps
  x_T = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
  x, frames = jax.jit(lambda k, x: smp.sample(toy_eps, k, x, capture_every=15))(
      jax.random.key(0), x_T)
  assert frames.shape == (1 + 3, 2, 4, 4, 1)  # x_T, after 15, 30 and 40 steps
  np.testing.assert_array_equal(frames[0], x_T)
  np.testing.assert_array_equal(frames[-1], x)
  x_plain, _ = jax.jit(lambda k, x: smp.sample(toy_eps, k, x))(jax.random.key(0), x_T)
  np.testing.assert_array_equal(x_plain, x)  # capturing does not change the result


def test_same_seed_same_images_and_no_recompile(tiny_config):
  setup, state = init_model_and_state(tiny_config)
  params = jax.tree.map(lambda p: p + 0.01, state.ema_params)
  apply = chex.assert_max_traces(setup.apply, n=1)
  smp = samplers.make_sampler('ddpm', np.asarray(setup.schedule.betas, np.float64))
  fn = make_sample_fn(apply, smp, (4, 8, 8, 1), make_mesh())
  a, _ = fn(params, jax.random.key(0))
  b, _ = fn(params, jax.random.key(0))
  c, _ = fn(params, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(a, c)
  assert np.all(np.abs(np.asarray(a)) < 10)


LINEAR = schedules.linear_betas()


def test_ddim_eta0_full_grid_matches_float64_numpy():
  smp = samplers.make_sampler('ddim', LINEAR, eta=0.0, clip_x0=False)
  assert smp.num_steps == 1000
  x_T = np.random.default_rng(0).normal(size=(2, 3, 3, 1))
  got, _ = jax.jit(lambda k, x: smp.sample(toy_eps, k, x))(jax.random.key(0),
                                                          jnp.asarray(x_T, jnp.float32))
  ab = np.cumprod(1 - LINEAR)
  x = x_T.copy()
  for t in range(999, -1, -1):
    eps = 0.5 * np.tanh(x) + 0.01 * t
    x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
    ab_prev = ab[t - 1] if t > 0 else 1.0
    x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
  np.testing.assert_allclose(got, x, rtol=2e-3, atol=2e-3)


def test_ddpm_respaced_to_all_steps_is_the_plain_ancestral_sampler():
  np.testing.assert_allclose(
      schedules.respace_betas(LINEAR, np.arange(1000)), LINEAR, rtol=1e-10)
  smp = samplers.make_sampler('ddpm', LINEAR, 1000, var_type='fixedlarge')
  np.testing.assert_array_equal(smp.timesteps, np.arange(1000))
  S = schedules.make_schedule(LINEAR)
  key = jax.random.key(5)
  x_T = jax.random.normal(jax.random.key(6), (2, 3, 3, 1))

  @jax.jit
  def algorithm2(x):
    def body(x, t):  # Ho et al. Algorithm 2, sigma_t^2 = beta_t, x0 clipped
      t_B = jnp.full((2,), t)
      eps = toy_eps(x, t_B)
      x0 = jnp.clip(diffusion.x0_from_eps(S, x, t_B, eps), -1, 1)
      mean, _, _ = diffusion.q_posterior(S, x0, x, t_B)
      z = jax.random.normal(jax.random.fold_in(key, t), x.shape)
      return mean + jnp.where(t > 0, jnp.exp(0.5 * S.log_betas_large[t]), 0.0) * z, None
    return jax.lax.scan(body, x, jnp.arange(999, -1, -1))[0]
  got, _ = jax.jit(lambda x: smp.sample(toy_eps, key, x))(x_T)
  np.testing.assert_array_equal(got, algorithm2(x_T))


def test_ddim_eta1_variance_is_the_respaced_ddpm_posterior_variance():
  smp = samplers.make_sampler('ddim', LINEAR, 50, eta=1.0, clip_x0=False)
  ddpm = samplers.make_sampler('ddpm', LINEAR, 50, var_type='fixedsmall', clip_x0=False)
  x = jnp.ones((4000, 1, 1, 1)) * 0.3
  i = jnp.asarray(20)
  zero_eps = lambda x, t: jnp.zeros_like(x)
  a = smp.step(zero_eps, (x,), i, jax.random.key(1))[0]
  b = ddpm.step(zero_eps, (x,), i, jax.random.key(1))[0]
  np.testing.assert_allclose(float(a.var()), float(ddpm.schedule.posterior_variance[20]),
                             rtol=0.1)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # same mean, same noise


def _gaussian_eps(s2):
  """Exact ε for data ~ N(0, s2): ε = sqrt(1-ab) x / (ab s2 + 1 - ab)."""
  ab = jnp.asarray(np.cumprod(1 - LINEAR), jnp.float32)
  def eps(x, t):
    a = ab[t][:, None, None, None]
    return jnp.sqrt(1 - a) * x / (a * s2 + 1 - a)
  return eps


def test_dpmpp_2m_is_second_order_on_a_gaussian():
  """The probability-flow ODE maps x_T to x_T·s/std_T exactly for N(0, s²)."""
  s2 = 0.25
  ab_T = np.prod(1 - LINEAR)
  x_T = jax.random.normal(jax.random.key(0), (64, 1, 1, 1))
  exact = np.asarray(x_T) * np.sqrt(s2) / np.sqrt(ab_T * s2 + 1 - ab_T)
  for spacing in ('uniform', 'trailing'):
    err = {}
    for name in ('ddim', 'dpm++2m'):
      for n in (10, 20, 50):
        smp = samplers.make_sampler(name, LINEAR, n, clip_x0=False, spacing=spacing)
        got, _ = smp.sample(_gaussian_eps(s2), jax.random.key(1), x_T)
        err[name, n] = float(np.abs(np.asarray(got) - exact).max())
    assert err['dpm++2m', 20] < 0.5 * err['ddim', 20], (spacing, err)
    assert err['dpm++2m', 20] < err['dpm++2m', 10] / 2.5, (spacing, err)  # ~h^2
    assert err['ddim', 20] > err['ddim', 10] / 2.5, (spacing, err)  # DDIM: ~h
    assert err['dpm++2m', 50] < 0.01 * np.abs(exact).max(), (spacing, err)


def test_unknown_sampler_and_too_many_steps():
  import pytest
  with pytest.raises(ValueError, match='unknown sampler'):
    samplers.make_sampler('euler_b', LINEAR)
  with pytest.raises(ValueError, match=r'\[1, 1000\]'):
    samplers.make_sampler('ddim', LINEAR, 1001)


@pytest.mark.parametrize('name', ['ddpm', 'ddim', 'dpm++2m'])
def test_sampler_from_config_builds_every_configured_sampler(tiny_config, name):
  """The trainer's grid sampler comes from the config: any sampler name works
  (DDPM-only options such as var_type are passed to DDPM alone)."""
  from ddpm_jax.builders import sampler_from_config
  tiny_config.sampling.sampler = name
  tiny_config.sampling.num_steps = 5
  s = sampler_from_config(tiny_config)
  assert s.num_steps == 5
  with pytest.raises(UserError, match=r'num_steps must be in \[1, 50\] \(the number of sampling steps\)'):
    sampler_from_config(tiny_config, num_steps=10 ** 6)


# --- σ-samplers (Karras et al., 2022; k-diffusion's conventions) ---

SIGMA_TABLE = np.sqrt((1 - np.cumprod(1 - LINEAR)) / np.cumprod(1 - LINEAR))


def _sigma_of_t(t):
  return jnp.exp(jnp.interp(t.astype(jnp.float32), jnp.arange(1000.0),
                            jnp.asarray(np.log(SIGMA_TABLE), jnp.float32)))


def _gaussian_eps_sigma(s2):
  """Exact ε at VP x and a float t for data ~ N(0, s2): ε = σ x_ve/(s2 + σ²)."""
  def eps(x, t):
    sig = _sigma_of_t(t)[:, None, None, None]
    return sig * x * jnp.sqrt(1 + sig ** 2) / (s2 + sig ** 2)
  return eps


def test_karras_sigmas_match_the_formula_at_both_ends_and_inside():
  sig = samplers.karras_sigmas(0.01, 80.0, 11)
  np.testing.assert_allclose([sig[0], sig[-1]], [0.01, 80.0], rtol=1e-12)
  mid = (0.01 ** (1 / 7) + 0.5 * (80 ** (1 / 7) - 0.01 ** (1 / 7))) ** 7
  np.testing.assert_allclose(sig[5], mid, rtol=1e-12)
  grid = samplers.sigma_grid(LINEAR, 20, 'karras')
  np.testing.assert_allclose([grid[0], grid[-1]], [SIGMA_TABLE[0], SIGMA_TABLE[-1]])
  np.testing.assert_allclose(samplers.sigma_grid(LINEAR, 1000, 'uniform'), SIGMA_TABLE)


@pytest.mark.parametrize('name', ['euler', 'heun', 'dpm2'])
def test_sigma_sampler_step_matches_float64_numpy(name):
  smp = samplers.make_sampler(name, LINEAR, 10, clip_x0=False, spacing='karras')
  sig = samplers.sigma_grid(LINEAR, 10, 'karras')
  log_tab = np.log(SIGMA_TABLE)
  x_vp = np.random.default_rng(0).normal(size=(2, 3, 3, 1))
  i = 6
  s, s_next = sig[i], sig[i - 1]

  def eps64(x, sigma):  # toy_eps at the VP input and the interpolated t
    t = np.interp(np.log(sigma), log_tab, np.arange(1000.0))
    return 0.5 * np.tanh(x) + 0.01 * t

  def d64(x_ve, sigma):  # (x - D(x; σ)) / σ
    return eps64(x_ve / np.sqrt(1 + sigma ** 2), sigma)

  x = x_vp * np.sqrt(1 + s ** 2)
  d = d64(x, s)
  if name == 'euler':
    want = x + d * (s_next - s)
  elif name == 'heun':
    x_e = x + d * (s_next - s)
    want = x + 0.5 * (d + d64(x_e, s_next)) * (s_next - s)
  else:
    s_mid = np.sqrt(s * s_next)
    want = x + d64(x + d * (s_mid - s), s_mid) * (s_next - s)
  want = want / np.sqrt(1 + s_next ** 2)
  (got,) = smp.step(toy_eps, (jnp.asarray(x_vp, jnp.float32),), jnp.asarray(i),
                    jax.random.key(0))
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_euler_ancestral_with_eta_0_is_euler_and_with_eta_1_is_random():
  x_T = jax.random.normal(jax.random.key(0), (4, 4, 4, 1))
  run = lambda name, **kw: np.asarray(samplers.make_sampler(
      name, LINEAR, 12, **kw).sample(toy_eps, jax.random.key(1), x_T)[0])
  np.testing.assert_allclose(run('euler_a', eta=0.0), run('euler'), atol=1e-6)
  a = samplers.make_sampler('euler_a', LINEAR, 12, eta=1.0)
  x1 = a.sample(toy_eps, jax.random.key(1), x_T)[0]
  x2 = a.sample(toy_eps, jax.random.key(2), x_T)[0]
  np.testing.assert_array_equal(x1, a.sample(toy_eps, jax.random.key(1), x_T)[0])
  assert not np.allclose(x1, x2)


def test_sigma_samplers_converge_with_their_order_on_a_gaussian():
  """On N(0, s²) data the ODE maps x_T to x_ve·s/√(s² + σ_max²) exactly:
  Euler's error falls ~h, Heun's, DPM2's and DPM++(2M) Karras's ~h²."""
  s2 = 0.25
  x_T = jax.random.normal(jax.random.key(0), (64, 1, 1, 1))
  smax = SIGMA_TABLE[-1]
  exact = np.asarray(x_T) * np.sqrt(1 + smax ** 2) * np.sqrt(s2) / np.sqrt(s2 + smax ** 2)
  err = {}
  for name in ('euler', 'heun', 'dpm2', 'dpm++2m'):
    for n in (10, 20, 40):
      smp = samplers.make_sampler(name, LINEAR, n, clip_x0=False, spacing='karras')
      got, _ = smp.sample(_gaussian_eps_sigma(s2), jax.random.key(1), x_T)
      err[name, n] = float(np.abs(np.asarray(got) - exact).max())
  for name in ('heun', 'dpm2', 'dpm++2m'):
    assert err[name, 40] < err[name, 20] / 2.8, (name, err)   # ~h^2: /4
    assert err[name, 40] < err['euler', 40] / 3, (name, err)
  assert err['euler', 20] / 2.8 < err['euler', 40] < err['euler', 20] / 1.4, err  # ~h


def test_sigma_sampler_options_and_bad_inputs(tiny_config):
  from ddpm_jax.builders import sampler_from_config
  tiny_config.sampling.num_steps = 5
  for name in options.SIGMA_SAMPLERS:
    assert sampler_from_config(tiny_config, name, spacing='karras').num_steps == 5
  with pytest.raises(UserError, match="spacing 'karras' is a σ grid"):
    sampler_from_config(tiny_config, 'ddim', spacing='karras')
  with pytest.raises(UserError, match="the euler sampler has no option 'eta'"):
    sampler_from_config(tiny_config, 'euler', eta=0.5)
  with pytest.raises(UserError, match='spacing must be one of'):
    sampler_from_config(tiny_config, 'euler', spacing='karas')
