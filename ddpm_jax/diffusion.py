"""Diffusion math: the forward process, the posterior and the L_simple loss.

Pure functions of arrays and a `Schedule`; no Flax. Images are NHWC in [-1, 1].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ddpm_jax.schedules import Schedule

# eps_fn(x_BHWC, t_B) -> eps_BHWC: the noise predictor at its parameters.
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def extract(a_T: jax.Array, t_B: jax.Array, x: jax.Array) -> jax.Array:
  """a[t] reshaped to broadcast against x ([B, 1, 1, 1] for images)."""
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
  raise ValueError(f"unknown variance type {var_type!r}; choose 'fixedlarge' "
                   "or 'fixedsmall'")


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
