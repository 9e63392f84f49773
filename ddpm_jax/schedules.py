"""Noise schedules: pure functions that build every derived array once.

Betas are built in float64 NumPy; `make_schedule` derives everything the loss
and the samplers need in float64 and only then casts to the compute dtype.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from ddpm_jax import options


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """Ho et al. (2020): betas linear from 1e-4 to 0.02 over T=1000."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008,
                 max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021): alpha_bar(t) = cos²((t/T + s)/(1 + s)·π/2)."""
  def f(t):
    return np.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
  t = np.arange(num_timesteps + 1, dtype=np.float64)
  alphas_cumprod = f(t) / f(0.0)
  betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
  return np.clip(betas, 0.0, max_beta)


def sigmoid_betas(num_timesteps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02, low: float = -6.0,
                  high: float = 6.0) -> np.ndarray:
  """Betas following a sigmoid of linspace(-6, 6) between beta_start and end.

  This is the sigmoid schedule of the Annotated Diffusion tutorial.
  """
  x = np.linspace(low, high, num_timesteps, dtype=np.float64)
  return beta_start + (beta_end - beta_start) / (1.0 + np.exp(-x))


def scaled_linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4,
                        beta_end: float = 0.02) -> np.ndarray:
  """Betas whose square roots are linear (Stable Diffusion's, diffusers'
  'scaled_linear')."""
  return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps,
                     dtype=np.float64) ** 2


def trained_betas(num_timesteps: int, betas) -> np.ndarray:
  """Betas given one per timestep (diffusers' `trained_betas`)."""
  b = np.asarray(betas, np.float64)
  if b.shape != (num_timesteps,) or not np.all((b > 0) & (b < 1)):
    raise ValueError(f'trained betas must be {num_timesteps} numbers in (0, 1)')
  return b


BETA_SCHEDULES: dict[str, Callable[..., np.ndarray]] = {
    'linear': linear_betas,
    'cosine': cosine_betas,
    'sigmoid': sigmoid_betas,
    'scaled_linear': scaled_linear_betas,
    'trained': trained_betas,
}
assert tuple(BETA_SCHEDULES) == options.SCHEDULES


def get_betas(kind: str, num_timesteps: int, beta_start: float | None = None,
              beta_end: float | None = None) -> np.ndarray:
  """Float64 betas of the named schedule. `beta_start`/`beta_end` set the
  linear and sigmoid schedules (default 1e-4, 0.02); the cosine schedule is
  defined by ᾱ alone and refuses them."""
  if kind not in BETA_SCHEDULES:
    raise ValueError(f'unknown schedule {kind!r}; choose one of '
                     f'{options.SCHEDULES}')
  if kind == 'cosine':
    if beta_start is not None or beta_end is not None:
      raise ValueError('the cosine schedule takes no beta_start/beta_end')
    return cosine_betas(num_timesteps)
  return BETA_SCHEDULES[kind](num_timesteps,
                              1e-4 if beta_start is None else beta_start,
                              0.02 if beta_end is None else beta_end)


class Schedule(NamedTuple):
  """Every per-timestep array of a schedule, each of shape [T]."""
  betas: jnp.ndarray
  alphas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray
  # log-variance of the reverse step with variance beta ("fixedlarge"); as in
  # the paper's code its t=0 entry is log(posterior_variance[1]).
  log_betas_large: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def schedule_arrays_np(betas: np.ndarray) -> dict[str, np.ndarray]:
  """All derived arrays in float64 NumPy (the reference the tests use too)."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas > 1):
    raise ValueError('betas must be a 1-D array in (0, 1]')
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # posterior_variance[0] is 0; clip the log by using the t=1 value there.
  if len(betas) > 1:
    post_clip = np.append(posterior_variance[1], posterior_variance[1:])
    log_large = np.log(np.append(posterior_variance[1], betas[1:]))
  else:
    post_clip = betas.copy()
    log_large = np.log(betas)
  return dict(
      betas=betas,
      alphas=alphas,
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=np.log(post_clip),
      posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
      log_betas_large=log_large,
  )


def make_schedule(betas: np.ndarray, dtype=jnp.float32) -> Schedule:
  """Builds the schedule pytree from float64 betas, casting at the end."""
  arrays = schedule_arrays_np(betas)
  return Schedule(**{k: jnp.asarray(v, dtype=dtype) for k, v in arrays.items()})


def space_timesteps(num_timesteps: int, num_steps: int,
                    spacing: str = 'uniform') -> np.ndarray:
  """Increasing subset of range(num_timesteps) with `num_steps` entries.

  'uniform' rounds evenly spaced points and always includes t=0 and t=T-1
  (improved-diffusion's respacing with one section); 'leading' takes
  arange(0, T, T//n) (DDIM); 'trailing' takes round(arange(T, 0, -T/n)) - 1
  (Lin et al., 2023), which always includes t=T-1.
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f'number of sampling steps must be in [1, {num_timesteps}]'
                     f', got {num_steps}')
  if spacing == 'uniform':
    if num_steps == 1:
      ts = np.array([num_timesteps - 1])
    else:
      ts = np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int64)
  elif spacing == 'leading':
    ts = np.arange(num_steps, dtype=np.int64) * (num_timesteps // num_steps)
  elif spacing == 'trailing':
    ts = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)
                  ).astype(np.int64)[::-1] - 1
  else:
    raise ValueError(f'unknown timestep spacing {spacing!r}; choose one of '
                     f'{options.TIMESTEP_SPACINGS}')
  ts = np.unique(ts)
  assert len(ts) == num_steps, (num_timesteps, num_steps, spacing)
  return ts


def respace_betas(betas: np.ndarray, timesteps: Sequence[int]) -> np.ndarray:
  """Betas of the process that visits only `timesteps` (increasing).

  new_beta_i = 1 - alpha_bar[t_i] / alpha_bar[t_{i-1}], so that the respaced
  process has exactly the same alpha_bar at the kept timesteps.
  """
  alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
  kept = alphas_cumprod[np.asarray(timesteps)]
  prev = np.append(1.0, kept[:-1])
  return 1.0 - kept / prev
