"""The Fréchet distance against SciPy and closed forms."""

import numpy as np
import pytest
import scipy.linalg

from ddpm_jax.metrics import fid


def _scipy_fd(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  d = mu1 - mu2
  return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def _random_cov(rng, n, rank=None):
  a = rng.normal(size=(n, rank or 2 * n))
  return a @ a.T / a.shape[1]


@pytest.mark.parametrize('n', [2, 16, 64])
def test_fd_matches_scipy_on_random_covariances(n):
  rng = np.random.default_rng(n)
  mu1, mu2 = rng.normal(size=n), rng.normal(size=n)
  s1, s2 = _random_cov(rng, n), _random_cov(rng, n)
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2),
                             _scipy_fd(mu1, s1, mu2, s2), rtol=1e-8)


def test_fd_closed_form_for_diagonal_gaussians():
  # Commuting covariances: FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  want = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
  assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
  assert fid.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0, abs=1e-10)


def test_fd_is_stable_on_singular_covariances():
  rng = np.random.default_rng(0)
  s1, s2 = _random_cov(rng, 50, rank=5), _random_cov(rng, 50, rank=5)
  fd = fid.frechet_distance(np.zeros(50), s1, np.zeros(50), s2)
  assert np.isfinite(fd) and fd > 0
  # sqrt of the 45 zero eigenvalues leaves ~1e-6 of round-off against tr = 2·tr(S)
  self_fd = fid.frechet_distance(np.zeros(50), s1, np.zeros(50), s1)
  assert abs(self_fd) < 1e-5 * 2 * np.trace(s1)
