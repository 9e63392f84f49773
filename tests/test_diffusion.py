import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, options, schedules

S = schedules.make_schedule(schedules.linear_betas())


def test_q_sample_matches_iterated_forward_process_in_distribution():
  """Closed form q(x_t|x_0) vs applying q(x_t|x_{t-1}) t times, per moment."""
  betas = schedules.linear_betas()
  n, t = 20000, 300
  x0 = jnp.full((n, 1), 0.7)
  key = jax.random.key(0)

  def body(x, k_b):
    k, b = k_b
    return jnp.sqrt(1 - b) * x + jnp.sqrt(b) * jax.random.normal(k, x.shape), None
  keys = jax.random.split(key, t + 1)
  x_iter, _ = jax.lax.scan(body, x0, (keys[:t + 1], jnp.asarray(betas[:t + 1], jnp.float32)))
  x_closed = diffusion.q_sample(S, x0, jnp.full((n,), t), jax.random.normal(key, x0.shape))
  ab = np.prod(1 - betas[:t + 1])
  for x in (x_iter, x_closed):
    assert abs(float(x.mean()) - 0.7 * np.sqrt(ab)) < 0.02
    assert abs(float(x.var()) - (1 - ab)) < 0.03
  assert abs(float(x_iter.mean()) - float(x_closed.mean())) < 0.03
  assert abs(float(x_iter.var()) - float(x_closed.var())) < 0.04


def test_eps_x0_conversions_round_trip():
  k1, k2 = jax.random.split(jax.random.key(1))
  x0 = jax.random.uniform(k1, (8, 4, 4, 1), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x0.shape)
  t = jnp.arange(8) * 120
  xt = diffusion.q_sample(S, x0, t, eps)
  np.testing.assert_allclose(diffusion.x0_from_eps(S, xt, t, eps), x0, atol=2e-3)
  np.testing.assert_allclose(diffusion.eps_from_x0(S, xt, t, x0), eps, atol=2e-3, rtol=1e-3)


def test_posterior_matches_float64_bayes_rule():
  betas = schedules.linear_betas()
  ab = np.cumprod(1 - betas)
  x0, xt, t = 0.3, -0.5, 400
  # q(x_{t-1}|x_0) = N(sqrt(ab_{t-1}) x0, 1-ab_{t-1}); q(x_t|x_{t-1}) = N(sqrt(a_t) x, b_t)
  prior_m, prior_v = np.sqrt(ab[t - 1]) * x0, 1 - ab[t - 1]
  a_t = 1 - betas[t]
  var = 1 / (1 / prior_v + a_t / betas[t])
  mean = var * (prior_m / prior_v + np.sqrt(a_t) * xt / betas[t])
  m, v, lv = diffusion.q_posterior(S, jnp.full((1, 1), x0), jnp.full((1, 1), xt), jnp.array([t]))
  np.testing.assert_allclose(float(m[0, 0]), mean, rtol=1e-5)
  np.testing.assert_allclose(float(v[0, 0]), var, rtol=1e-5)
  np.testing.assert_allclose(float(lv[0, 0]), np.log(var), rtol=1e-5)


def test_reverse_log_variance_choices():
  np.testing.assert_allclose(diffusion.reverse_log_variance(S, 'fixedlarge')[1:],
                             np.log(schedules.linear_betas()[1:]), rtol=1e-5)
  np.testing.assert_array_equal(diffusion.reverse_log_variance(S, 'fixedsmall'),
                                S.posterior_log_variance_clipped)


def test_l_simple_is_zero_for_the_true_noise_and_positive_otherwise():
  x0 = jnp.zeros((16, 4, 4, 1))
  # With x0 = 0, x_t = sqrt(1-ab_t) eps, so eps is recoverable exactly.
  oracle = lambda x, t: x / diffusion.extract(S.sqrt_one_minus_alphas_cumprod, t, x)
  assert float(diffusion.l_simple(oracle, S, x0, jax.random.key(0))) < 1e-8
  zero = lambda x, t: jnp.zeros_like(x)
  loss = float(diffusion.l_simple(zero, S, x0, jax.random.key(0)))
  assert 0.7 < loss < 1.3  # E[eps^2] = 1


def test_normal_kl_matches_float64_formula():
  rng = np.random.default_rng(0)
  m1, m2, l1, l2 = rng.normal(size=(4, 50))
  ref = (np.log(np.sqrt(np.exp(l2)) / np.sqrt(np.exp(l1)))
         + (np.exp(l1) + (m1 - m2) ** 2) / (2 * np.exp(l2)) - 0.5)
  np.testing.assert_allclose(diffusion.normal_kl(m1, l1, m2, l2), ref, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(diffusion.normal_kl(m1, l1, m1, l1)).max()) < 1e-6


def test_discretized_gaussian_is_a_distribution_over_256_levels():
  levels = jnp.linspace(-1, 1, 256)
  for mean, log_scale in [(0.1, np.log(0.05)), (-0.9, np.log(0.3)), (0.99, np.log(0.01))]:
    lp = diffusion.discretized_gaussian_log_likelihood(
        levels, jnp.full(256, mean), jnp.full(256, log_scale))
    assert float(jnp.exp(lp).sum()) == pytest.approx(1.0, abs=2e-3)
  # One interior bin against the float64 CDF difference (same tanh CDF).
  x, mu, ls = 0.2, 0.25, np.log(0.1)
  cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
  ref = np.log(cdf((x - mu + 1 / 255) / 0.1) - cdf((x - mu - 1 / 255) / 0.1))
  got = float(diffusion.discretized_gaussian_log_likelihood(jnp.array(x), jnp.array(mu), jnp.array(ls)))
  assert got == pytest.approx(ref, rel=1e-4)


def test_vlb_terms_of_the_true_posterior_model():
  """With the exact ε the model mean equals the posterior mean, so every KL
  term is just the variance mismatch, which is 0 for 'fixedsmall'."""
  from ddpm_jax import schedules as sch
  s = sch.make_schedule(sch.linear_betas(100, 1e-3, 0.2))
  x0 = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], size=(2, 4, 4, 1)), jnp.float32)
  key = jax.random.key(3)

  def exact_eps(x, t):  # invert q_sample with the noise the bound will draw
    noise = jax.random.normal(jax.random.fold_in(key, t[0]), x0.shape, x0.dtype)
    return noise
  terms, prior = diffusion.vlb_terms_bpd(exact_eps, s, x0, key, 'fixedsmall')
  assert terms.shape == (100, 2) and prior.shape == (2,)
  np.testing.assert_allclose(terms[1:], 0.0, atol=1e-4)
  assert float(terms[0].min()) > 0 and float(prior.max()) < 0.1
  large, _ = diffusion.vlb_terms_bpd(exact_eps, s, x0, key, 'fixedlarge')
  assert float(large[1:].sum()) > 0.01  # beta > beta-tilde costs bits


def _f64_schedule():
  b = np.asarray(schedules.linear_betas(), np.float64)
  ab = np.cumprod(1 - b)
  return ab, ab / (1 - ab)


@pytest.mark.parametrize('prediction', options.PREDICTIONS)
def test_each_target_converts_back_to_the_true_noise(prediction):
  """Feeding the exact target of x0-, v- or ε-prediction gives back ε (float64
  formulas: v = √ᾱ ε - √(1-ᾱ) x0)."""
  ab, _ = _f64_schedule()
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (6, 4, 4, 1))
  noise = rng.normal(size=x0.shape)
  t = np.array([0, 1, 10, 300, 900, 999])
  a = ab[t][:, None, None, None]
  x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
  want = {'eps': noise, 'x0': x0, 'v': np.sqrt(a) * noise - np.sqrt(1 - a) * x0}
  j = lambda v: jnp.asarray(v, jnp.float32)
  target = diffusion.prediction_target(S, prediction, j(x0), jnp.asarray(t), j(noise))
  np.testing.assert_allclose(target, want[prediction], atol=1e-5)
  eps = diffusion.eps_from_prediction(S, prediction, j(want[prediction]), j(x_t),
                                      jnp.asarray(t))
  tol = {'x0': 2e-3, 'v': 1e-5, 'eps': 0}[prediction]  # x0: ÷√(1-ᾱ_0) = ÷0.01
  np.testing.assert_allclose(eps, noise, atol=tol)
  apply = lambda params, x, tt: params * 0 + j(want[prediction])
  np.testing.assert_allclose(
      diffusion.eps_apply(apply, S, prediction)(0.0, j(x_t), jnp.asarray(t)),
      noise, atol=tol)


@pytest.mark.parametrize('prediction', options.PREDICTIONS)
def test_min_snr_weights_are_the_same_in_eps_space(prediction):
  """min-SNR-γ (Hang et al., 2023): in ε-space every target gets min(SNR, γ)/SNR;
  a target's own squared error is its ε error times 1/SNR (x0), 1 (ε) or
  (SNR+1)/SNR (v)."""
  _, snr = _f64_schedule()
  w = np.asarray(diffusion.loss_weights(S, prediction, 'min_snr', 5.0), np.float64)
  # a target's squared error per unit of squared ε error
  own_to_eps = {'eps': 1.0, 'x0': 1.0 / snr, 'v': (snr + 1) / snr}[prediction]
  # the schedule is float32 on device: 1e-3 relative
  np.testing.assert_allclose(w * own_to_eps, np.minimum(snr, 5.0) / snr, rtol=1e-3)
  np.testing.assert_array_equal(diffusion.loss_weights(S, prediction), np.ones(1000))
  with pytest.raises(ValueError, match='loss weighting'):
    diffusion.loss_weights(S, prediction, 'p2')


def test_make_loss_eps_unweighted_is_l_simple_and_zero_at_the_target():
  x0 = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1, maxval=1)
  key = jax.random.key(2)
  model = lambda x, t: jnp.tanh(x) * 0.3
  assert float(diffusion.make_loss(S)(model, x0, key)) == float(
      diffusion.l_simple(model, S, x0, key))
  for prediction in ('x0', 'v'):   # a model returning the exact target scores 0
    def oracle(x_t, t_B):
      t_key, n_key = jax.random.split(key)
      noise = jax.random.normal(n_key, x0.shape)
      t = jax.random.randint(t_key, (4,), 0, 1000)
      return diffusion.prediction_target(S, prediction, x0, t, noise)
    loss = diffusion.make_loss(S, prediction, 'min_snr')
    assert float(loss(oracle, x0, key)) < 1e-10
    assert float(loss(model, x0, key)) > 1e-3
  with pytest.raises(ValueError, match='prediction'):
    diffusion.make_loss(S, 'score')
