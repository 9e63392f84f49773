import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, samplers, schedules
from ddpm_jax.pipeline import make_sample_fn
from ddpm_jax.training import init_model_and_state, make_mesh

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
