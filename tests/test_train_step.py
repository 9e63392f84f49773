import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import data as data_lib
from ddpm_jax import sharding
from ddpm_jax.train import step as step_lib


def _batches(config, n):
  src = data_lib.load_embedded_mnist()
  b = data_lib.Batches(src, config.training.batch_size, config.seed)
  return [b.batch(i) for i in range(n)]


def _run(config, devices, batches, apply_wrapper=None):
  setup, state = step_lib.init_train_state(config)
  if apply_wrapper:
    setup = dataclasses.replace(setup, apply=apply_wrapper(setup.apply))
  mesh = sharding.make_mesh(devices)
  state = sharding.replicate(state, mesh)
  step = step_lib.make_train_step(setup, mesh)
  losses = []
  for b in batches:
    state, m = step(state, sharding.shard_batch(b, mesh))
    losses.append(float(m['loss']))
  return state, losses


def test_four_devices_equal_one_device(tiny_config):
  assert jax.device_count() == 4
  batches = _batches(tiny_config, 3)
  s1, l1 = _run(tiny_config, jax.devices()[:1], batches)
  s4, l4 = _run(tiny_config, jax.devices(), batches)
  np.testing.assert_allclose(l1, l4, rtol=1e-5)
  # Zero-initialised kernels sit near 0, where Adam's normalised update turns
  # all-reduce rounding into ~1e-6 absolute differences.
  chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s4.params),
                              rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(jax.device_get(s1.ema_params),
                              jax.device_get(s4.ema_params), rtol=1e-4, atol=1e-5)
  assert len(s4.params['conv_in']['kernel'].sharding.device_set) == 4


def test_train_step_compiles_once(tiny_config):
  batches = _batches(tiny_config, 4)
  wrap = lambda f: chex.assert_max_traces(f, n=1)
  state, losses = _run(tiny_config, jax.devices(), batches, wrap)
  assert int(state.step) == 4 and np.all(np.isfinite(losses))


def test_loss_decreases_and_ema_lags(tiny_config):
  tiny_config.training.learning_rate = 3e-3
  tiny_config.training.ema_decay = 0.9
  batches = _batches(tiny_config, 40)
  state, losses = _run(tiny_config, jax.devices(), batches)
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
  p, e = jax.device_get((state.params, state.ema_params))
  diff = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(e))]
  assert max(diff) > 0


def test_non_finite_batch_leaves_state_unchanged(tiny_config):
  batches = _batches(tiny_config, 1)
  setup, state = step_lib.init_train_state(tiny_config)
  mesh = sharding.make_mesh()
  state = sharding.replicate(state, mesh)
  before = jax.device_get(state.params)
  step = step_lib.make_train_step(setup, mesh)
  # uint8 images cannot be NaN; poison the params' input conv instead.
  bad = jax.tree.map(lambda x: x, state)
  bad.params['conv_in']['kernel'] = bad.params['conv_in']['kernel'] * np.nan
  new, m = step(bad, sharding.shard_batch(batches[0], mesh))
  assert int(m['finite']) == 0 and int(new.step) == 1
  assert np.isnan(np.asarray(new.params['conv_in']['kernel'])).all()  # kept as given
  chex.assert_trees_all_equal(jax.device_get(new.params['conv_out']),
                              before['conv_out'])


def test_warmup_learning_rate(tiny_config):
  tx = step_lib.make_optimizer(tiny_config.training)
  p = {'w': np.ones(3, np.float32)}
  s = tx.init(p)
  g = {'w': np.ones(3, np.float32)}
  u0, s = tx.update(g, s, p)
  assert np.allclose(u0['w'], 0.0)  # lr is 0 at step 0 of the warm-up
  u1, s = tx.update(g, s, p)
  assert np.all(np.asarray(u1['w']) < 0)


def test_cosine_lr_decay_reaches_zero_at_num_steps(tiny_config):
  t = tiny_config.training
  t.learning_rate, t.warmup_steps, t.num_steps = 1.0, 2, 10
  p = {'w': np.ones(1, np.float32)}
  g = {'w': np.ones(1, np.float32)}

  def step_sizes(decay):
    t.lr_decay = decay
    tx = step_lib.make_optimizer(t)
    s = tx.init(p)
    out = []
    for _ in range(11):
      u, s = tx.update(g, s, p)
      out.append(-float(u['w'][0]))   # Adam's step on a constant gradient: lr
    return np.array(out)
  const, cos = step_sizes('none'), step_sizes('cosine')
  np.testing.assert_allclose(const[2:], 1.0, rtol=1e-3)
  np.testing.assert_allclose(cos[:3], const[:3], rtol=1e-6)   # same warm-up
  np.testing.assert_allclose(cos[6], 0.5, rtol=1e-3)          # half-way: lr/2
  assert cos[10] < 1e-6 and np.all(np.diff(cos[2:]) < 0)


def test_a_non_finite_update_is_not_applied(tiny_config):
  """Finite loss and gradients but a NaN learning rate: the guard sees the
  update, so neither params nor EMA take it (validation refuses NaN configs;
  this is the guard behind it)."""
  tiny_config.training.learning_rate = float('nan')
  tiny_config.training.warmup_steps = 0
  batches = _batches(tiny_config, 2)
  setup, state = step_lib.init_train_state(tiny_config)
  mesh = sharding.make_mesh()
  state = sharding.replicate(state, mesh)
  before = jax.device_get((state.params, state.ema_params))
  step = step_lib.make_train_step(setup, mesh)
  for b in batches:
    state, m = step(state, sharding.shard_batch(b, mesh))
    assert np.isfinite(float(m['loss'])) and np.isfinite(float(m['grad_norm']))
    assert int(m['finite']) == 0
  chex.assert_trees_all_equal(jax.device_get((state.params, state.ema_params)), before)


def _deterministic(setup):
  """The model's ε-loss with t and ε fixed by each image (no random key), so
  a batch and its micro-batches see the same draws."""
  from ddpm_jax import diffusion
  s = setup.schedule

  def objective(params, ae_params, x, y, key):
    t = (jnp.abs(x).sum(axis=(1, 2, 3)) * 37).astype(jnp.int32) % s.num_timesteps
    noise = jnp.flip(x, axis=2) * 0.5 + 0.1
    out = setup.apply(params, diffusion.q_sample(s, x, t, noise), t, y, key)
    return jnp.mean((out - noise) ** 2), {'t_mean': jnp.mean(t.astype(jnp.float32))}
  return objective


def test_grad_accumulation_equals_one_big_batch(tiny_config):
  tiny_config.training.batch_size = 16
  batches = _batches(tiny_config, 2)
  out = {}
  for k in (1, 4):
    tiny_config.training.grad_accum_steps = k
    setup, state = step_lib.init_train_state(tiny_config)
    setup = dataclasses.replace(setup, objective=_deterministic(setup))
    mesh = sharding.make_mesh(jax.devices()[:2])
    state = sharding.replicate(state, mesh)
    step = step_lib.make_train_step(setup, mesh)
    ms = []
    for b in batches:
      state, m = step(state, sharding.shard_batch(b, mesh))
      ms.append(jax.device_get(m))
    out[k] = jax.device_get(state), ms
  (s1, m1), (s4, m4) = out[1], out[4]
  assert int(s4.step) == int(s1.step) == 2   # one counted step per update
  for a, b in zip(m1, m4):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
    np.testing.assert_allclose(a['grad_norm'], b['grad_norm'], rtol=1e-4)
    np.testing.assert_allclose(a['t_mean'], b['t_mean'], rtol=1e-6)
  chex.assert_trees_all_close(s1.params, s4.params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(s1.ema_params, s4.ema_params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(s1.opt_state, s4.opt_state, rtol=1e-4, atol=1e-6)


def test_grad_accumulation_runs_the_real_objective(tiny_config):
  tiny_config.training.grad_accum_steps = 2
  tiny_config.training.batch_size = 16
  state, losses = _run(tiny_config, jax.devices(), _batches(tiny_config, 2))
  assert int(state.step) == 2 and np.all(np.isfinite(losses))


def test_grad_accumulation_must_split_the_batch(tiny_config):
  from ddpm_jax import config as config_lib
  tiny_config.training.batch_size = 12
  tiny_config.training.grad_accum_steps = 4
  with pytest.raises(config_lib.ConfigError, match='micro-batches over 2 devices; '
                     'use a multiple of 8'):
    config_lib.validate(tiny_config, 2)
  tiny_config.training.grad_accum_steps = 0
  with pytest.raises(config_lib.ConfigError, match='positive integer'):
    config_lib.validate(tiny_config, 1)
