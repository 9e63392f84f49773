"""The KL autoencoder: shapes, the KL term, the loss."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ddpm_jax.models.autoencoder import (Autoencoder, Posterior, make_ae_fns,
                                         make_ae_loss, reconstruction_loss)
from ddpm_jax.models.layers import split_params


def _tiny(**kw):
  args = dict(channels=1, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
              z_channels=4, num_groups=4, rngs=nnx.Rngs(0))
  args.update(kw)
  return Autoencoder(**args)


def test_shapes_follow_f_and_z_channels():
  g, p = split_params(_tiny())
  fns = make_ae_fns(g)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1), minval=-1, maxval=1)
  post = fns.encode(p, x)
  assert post.mean.shape == post.logvar.shape == (2, 8, 8, 4)   # f = 4
  assert fns.decode(p, post.sample(jax.random.key(1))).shape == x.shape
  g3, p3 = split_params(_tiny(channels=3, ch_mult=(1, 2), z_channels=3))
  post3 = make_ae_fns(g3).encode(p3, jnp.zeros((1, 16, 16, 3)))
  assert post3.mean.shape == (1, 8, 8, 3)                         # f = 2


def test_kl_matches_a_float64_formula():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 2, 2, 4))
  logvar = rng.normal(size=(3, 2, 2, 4)) * 0.5
  ours = np.asarray(Posterior(jnp.asarray(mean, jnp.float32),
                              jnp.asarray(logvar, jnp.float32)).kl())
  var = np.exp(logvar)
  # KL(N(mu, var) || N(0, 1)) = 0.5 (mu^2 + var - 1 - log var), summed
  ref = 0.5 * (mean ** 2 + var - 1.0 - logvar).sum((1, 2, 3))
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  zero = Posterior(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1))).kl()
  np.testing.assert_array_equal(zero, 0.0)


def test_posterior_samples_have_its_mean_and_std():
  post = Posterior(jnp.full((1, 64, 64, 4), 0.5), jnp.full((1, 64, 64, 4), np.log(4.0)))
  z = np.asarray(post.sample(jax.random.key(0)))
  assert abs(z.mean() - 0.5) < 0.05 and abs(z.std() - 2.0) < 0.05


def test_loss_is_reconstruction_plus_beta_kl():
  g, p = split_params(_tiny())
  fns = make_ae_fns(g)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1), minval=-1, maxval=1)
  key = jax.random.key(3)
  loss, (rec, kl) = make_ae_loss(fns, 'l1', 0.25)(p, x, key)
  post = fns.encode(p, x)
  x_rec = fns.decode(p, post.sample(key))
  np.testing.assert_allclose(rec, np.abs(np.asarray(x - x_rec)).sum((1, 2, 3)).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(kl, np.asarray(post.kl()).mean(), rtol=1e-5)
  np.testing.assert_allclose(loss, rec + 0.25 * kl, rtol=1e-6)
  l2 = reconstruction_loss(x, x_rec, 'l2')
  np.testing.assert_allclose(l2, np.square(np.asarray(x - x_rec)).sum((1, 2, 3)).mean(),
                             rtol=1e-5)
