import numpy as np
import pytest

from ddpm_jax import schedules


def _reference(betas):
  """Derived arrays written out element by element in float64."""
  T = len(betas)
  ab, prod = np.zeros(T), 1.0
  for t in range(T):
    prod *= 1.0 - betas[t]
    ab[t] = prod
  ab_prev = np.array([1.0] + list(ab[:-1]))
  post_var = np.array([betas[t] * (1 - ab_prev[t]) / (1 - ab[t]) for t in range(T)])
  return dict(
      alphas_cumprod=ab, alphas_cumprod_prev=ab_prev,
      sqrt_alphas_cumprod=np.sqrt(ab), sqrt_one_minus_alphas_cumprod=np.sqrt(1 - ab),
      sqrt_recip_alphas_cumprod=1 / np.sqrt(ab),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1 / ab - 1),
      posterior_variance=post_var,
      posterior_log_variance_clipped=np.log(np.r_[post_var[1], post_var[1:]]),
      posterior_mean_coef1=np.array([betas[t] * np.sqrt(ab_prev[t]) / (1 - ab[t]) for t in range(T)]),
      posterior_mean_coef2=np.array([(1 - ab_prev[t]) * np.sqrt(1 - betas[t]) / (1 - ab[t]) for t in range(T)]),
  )


@pytest.mark.parametrize('kind', ['linear', 'cosine', 'sigmoid'])
def test_schedule_arrays_match_float64_reference(kind):
  betas = schedules.get_betas(kind, 1000)
  ref = _reference(betas)
  s = schedules.make_schedule(betas)
  for name, want in ref.items():
    got = np.asarray(getattr(s, name), np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, err_msg=name)
  assert s.num_timesteps == 1000
  assert s.betas.dtype == np.float32


def test_linear_betas_and_alpha_bar_T():
  b = schedules.linear_betas()
  assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
  ab_T = np.prod(1 - b)
  assert 3.5e-5 < ab_T < 4.6e-5  # about 4e-5, as the paper says
  assert float(schedules.make_schedule(b).alphas_cumprod[-1]) == pytest.approx(ab_T, rel=1e-3)


def test_cosine_matches_nichol_dhariwal_formula():
  T, s = 1000, 0.008
  b = schedules.cosine_betas(T)
  f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
  ab = np.cumprod(1 - b)
  # Away from the clipped end the cumulative product is f(t)/f(0) exactly.
  np.testing.assert_allclose(ab[:900], (f(np.arange(1, T + 1)) / f(0))[:900], rtol=1e-9)
  assert b.max() <= 0.999 and b[-1] == pytest.approx(0.999)


def test_sigmoid_is_monotone_between_endpoints():
  b = schedules.sigmoid_betas(1000)
  assert np.all(np.diff(b) > 0)
  assert 1e-4 < b[0] < 2e-4 and 0.0199 < b[-1] < 0.02


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match='unknown schedule'):
    schedules.get_betas('quadratic', 10)


@pytest.mark.parametrize('spacing', ['uniform', 'leading', 'trailing'])
@pytest.mark.parametrize('n', [1, 10, 50, 999, 1000])
def test_space_timesteps(spacing, n):
  ts = schedules.space_timesteps(1000, n, spacing)
  assert len(ts) == n and np.all(np.diff(ts) > 0) and ts[0] >= 0 and ts[-1] <= 999
  if spacing in ('uniform', 'trailing'):
    assert ts[-1] == 999


def test_respaced_process_keeps_alpha_bar():
  b = schedules.linear_betas()
  ts = schedules.space_timesteps(1000, 50)
  nb = schedules.respace_betas(b, ts)
  np.testing.assert_allclose(np.cumprod(1 - nb), np.cumprod(1 - b)[ts], rtol=1e-12)
