"""Diffusion math: the forward process, the posterior and the L_simple loss.

Pure functions of arrays and a `Schedule`; no Flax. Images are NHWC in [-1, 1].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ddpm_jax.options import LOSS_WEIGHTINGS, PREDICTIONS, VAR_TYPES
from ddpm_jax.schedules import Schedule

# eps_fn(x_BHWC, t_B) -> eps_BHWC: the noise predictor at its parameters.
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def extract(a_T: jax.Array, t_B: jax.Array, x: jax.Array) -> jax.Array:
  """a[t] reshaped to broadcast against x ([B, 1, 1, 1] for images). A float
  t (the σ-samplers ask the model between timesteps) interpolates linearly."""
  if jnp.issubdtype(t_B.dtype, jnp.floating):
    out = jnp.interp(t_B, jnp.arange(a_T.shape[0], dtype=t_B.dtype), a_T)
  else:
    out = jnp.take(a_T, t_B)
  return out.reshape(t_B.shape + (1,) * (x.ndim - t_B.ndim)).astype(x.dtype)


def q_sample(s: Schedule, x0: jax.Array, t_B: jax.Array,
             noise: jax.Array) -> jax.Array:
  """x_t ~ q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I), in closed form."""
  return (extract(s.sqrt_alphas_cumprod, t_B, x0) * x0 +
          extract(s.sqrt_one_minus_alphas_cumprod, t_B, x0) * noise)


def x0_from_eps(s: Schedule, x_t: jax.Array, t_B: jax.Array,
                eps: jax.Array) -> jax.Array:
  return (extract(s.sqrt_recip_alphas_cumprod, t_B, x_t) * x_t -
          extract(s.sqrt_recipm1_alphas_cumprod, t_B, x_t) * eps)


def eps_from_x0(s: Schedule, x_t: jax.Array, t_B: jax.Array,
                x0: jax.Array) -> jax.Array:
  return ((extract(s.sqrt_recip_alphas_cumprod, t_B, x_t) * x_t - x0) /
          extract(s.sqrt_recipm1_alphas_cumprod, t_B, x_t))


def q_posterior(s: Schedule, x0: jax.Array, x_t: jax.Array, t_B: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
  mean = (extract(s.posterior_mean_coef1, t_B, x_t) * x0 +
          extract(s.posterior_mean_coef2, t_B, x_t) * x_t)
  var = extract(s.posterior_variance, t_B, x_t)
  log_var = extract(s.posterior_log_variance_clipped, t_B, x_t)
  return mean, var, log_var


def reverse_log_variance(s: Schedule, var_type: str) -> jax.Array:
  """Log-variance [T] of p(x_{t-1}|x_t): 'fixedlarge' (β) or 'fixedsmall' (β̃)."""
  if var_type == 'fixedlarge':
    return s.log_betas_large
  if var_type == 'fixedsmall':
    return s.posterior_log_variance_clipped
  raise ValueError(f'unknown variance type {var_type!r}; choose one of '
                   f'{VAR_TYPES}')


def p_mean(s: Schedule, eps: jax.Array, x_t: jax.Array, t_B: jax.Array,
           clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
  """Mean of p(x_{t-1}|x_t) through the predicted x_0; returns (mean, x0)."""
  x0 = x0_from_eps(s, x_t, t_B, eps)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
  mean, _, _ = q_posterior(s, x0, x_t, t_B)
  return mean, x0


def l_simple(eps_fn: EpsFn, s: Schedule, x0: jax.Array, key: jax.Array
             ) -> jax.Array:
  """L_simple = E_{t, ε} ||ε - ε_θ(x_t, t)||², averaged over every element."""
  t_key, n_key = jax.random.split(key)
  t_B = jax.random.randint(t_key, (x0.shape[0],), 0, s.num_timesteps)
  noise = jax.random.normal(n_key, x0.shape, x0.dtype)
  x_t = q_sample(s, x0, t_B, noise)
  eps = eps_fn(x_t, t_B)
  return jnp.mean(jnp.square(eps.astype(jnp.float32) - noise))


# --- What the network predicts, and how its loss is weighted ---
#
# The network may predict ε (the paper), x_0, or v = √ᾱ ε - √(1-ᾱ) x_0
# (Salimans & Ho, 2022). Samplers always see ε: `eps_apply` converts. The
# loss is the mean squared error against the prediction's own target, times
# a per-timestep weight: 1 ('none'), or min(SNR, γ) divided by the target's
# own SNR factor ('min_snr', Hang et al., 2023), which gives every target
# the same ε-space weight min(SNR, γ)/SNR.



def snr(s: Schedule) -> jax.Array:
  """SNR_t = ᾱ_t / (1 - ᾱ_t), [T]."""
  return s.alphas_cumprod / (1.0 - s.alphas_cumprod)


def prediction_target(s: Schedule, prediction: str, x0: jax.Array,
                      t_B: jax.Array, noise: jax.Array) -> jax.Array:
  if prediction == 'eps':
    return noise
  if prediction == 'x0':
    return x0
  if prediction == 'v':
    return (extract(s.sqrt_alphas_cumprod, t_B, x0) * noise -
            extract(s.sqrt_one_minus_alphas_cumprod, t_B, x0) * x0)
  raise ValueError(f'unknown prediction {prediction!r}; choose one of {PREDICTIONS}')


def eps_from_prediction(s: Schedule, prediction: str, out: jax.Array,
                        x_t: jax.Array, t_B: jax.Array) -> jax.Array:
  """ε implied by the network's output `out` at (x_t, t)."""
  if prediction == 'eps':
    return out
  if prediction == 'x0':
    return eps_from_x0(s, x_t, t_B, out)
  if prediction == 'v':
    return (extract(s.sqrt_alphas_cumprod, t_B, x_t) * out +
            extract(s.sqrt_one_minus_alphas_cumprod, t_B, x_t) * x_t)
  raise ValueError(f'unknown prediction {prediction!r}; choose one of {PREDICTIONS}')


def eps_apply(apply: Callable, s: Schedule, prediction: str) -> Callable:
  """apply(params, x, t, *rest) -> network output, as a function returning ε."""
  if prediction == 'eps':
    return apply
  if prediction not in PREDICTIONS:
    raise ValueError(f'unknown prediction {prediction!r}; choose one of {PREDICTIONS}')

  def wrapped(params, x_BHWC, t_B, *rest):
    out = apply(params, x_BHWC, t_B, *rest)
    return eps_from_prediction(s, prediction, out, x_BHWC.astype(out.dtype), t_B)
  return wrapped


def loss_weights(s: Schedule, prediction: str, weighting: str = 'none',
                 min_snr_gamma: float = 5.0) -> jax.Array:
  """Per-timestep weights [T] of the squared error in the target's space."""
  if weighting == 'none':
    return jnp.ones_like(s.alphas_cumprod)
  if weighting != 'min_snr':
    raise ValueError(f'unknown loss weighting {weighting!r}; choose one of '
                     f'{LOSS_WEIGHTINGS}')
  r = snr(s)
  own = {'eps': r, 'x0': jnp.ones_like(r), 'v': r + 1.0}[prediction]
  return jnp.minimum(r, min_snr_gamma) / own


def make_loss(s: Schedule, prediction: str = 'eps', weighting: str = 'none',
              min_snr_gamma: float = 5.0) -> Callable:
  """loss(out_fn, x0, key): E_{t, ε} w_t ||target - out_fn(x_t, t)||², where
  out_fn is the raw network. 'eps' with 'none' is exactly `l_simple`."""
  if prediction not in PREDICTIONS:  # fail here, not inside jit
    raise ValueError(f'unknown prediction {prediction!r}; choose one of {PREDICTIONS}')
  w_T = loss_weights(s, prediction, weighting, min_snr_gamma)

  def loss(out_fn: Callable, x0: jax.Array, key: jax.Array) -> jax.Array:
    t_key, n_key = jax.random.split(key)
    t_B = jax.random.randint(t_key, (x0.shape[0],), 0, s.num_timesteps)
    noise = jax.random.normal(n_key, x0.shape, x0.dtype)
    x_t = q_sample(s, x0, t_B, noise)
    target = prediction_target(s, prediction, x0, t_B, noise)
    err = jnp.square(out_fn(x_t, t_B).astype(jnp.float32) - target)
    return jnp.mean(extract(w_T, t_B, err) * err)
  return loss


# --- The variational bound in bits/dim (Ho et al., 2020, eq. 5) ---

def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_std_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(jnp.sqrt(2.0 / jnp.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log p(x) of 8-bit data in [-1, 1] under a Gaussian binned to 256 levels,
  with the edge bins open (the paper's decoder L_0)."""
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vlb_terms_bpd(eps_fn: EpsFn, s: Schedule, x0: jax.Array, key: jax.Array,
                  var_type: str = 'fixedlarge') -> tuple[jax.Array, jax.Array]:
  """Per-image bits/dim: (terms [T, B] with L_0 at t=0, prior [B]).

  The total negative ELBO is terms.sum(0) + prior. One `lax.scan` over t.
  """
  log_var = reverse_log_variance(s, var_type)
  B = x0.shape[0]
  dims = x0[0].size
  to_bpd = lambda a: jnp.sum(a.reshape(B, -1), 1) / (dims * jnp.log(2.0))

  def term(_, t):
    t_B = jnp.full((B,), t)
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
    x_t = q_sample(s, x0, t_B, noise)
    mean, _ = p_mean(s, eps_fn(x_t, t_B), x_t, t_B, clip_x0=False)
    lv = extract(log_var, t_B, x_t)
    true_mean, _, true_lv = q_posterior(s, x0, x_t, t_B)
    kl = to_bpd(normal_kl(true_mean, true_lv, mean, lv))
    nll = -to_bpd(discretized_gaussian_log_likelihood(x0, mean, 0.5 * lv))
    return None, jnp.where(t == 0, nll, kl)

  _, terms = jax.lax.scan(term, None, jnp.arange(s.num_timesteps))
  T_B = jnp.full((B,), s.num_timesteps - 1)
  mean_T = extract(s.sqrt_alphas_cumprod, T_B, x0) * x0
  lv_T = jnp.log(extract(1.0 - s.alphas_cumprod, T_B, x0))
  prior = to_bpd(normal_kl(mean_T, lv_T, jnp.zeros_like(x0), jnp.zeros_like(x0)))
  return terms, prior
