"""The sampler algorithms: update rules and step grids, run as one `lax.scan`.

A factory fixes everything static at build time (the timestep table, the
respaced schedule, the variance choice) and returns a `Sampler` whose `step`
updates the carry from grid index i to i-1. `Sampler.sample` scans that step
over the grid; there is no Python loop over steps and no Flax. `SAMPLERS` is
the registry (keyed by options.SAMPLERS). What is built around a sampler
(guidance, img2img, inpainting, latent decoding, jit) is sampling.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax import options
from ddpm_jax.diffusion import EpsFn
from ddpm_jax.schedules import Schedule, make_schedule, respace_betas, space_timesteps

# step(eps_fn, carry, i, key) -> carry; carry[0] is x at grid index i.
StepFn = Callable[[EpsFn, Any, jax.Array, jax.Array], Any]
# after_step(x, i, key) -> x, applied after the step from grid index i.
AfterStep = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A reverse process over `timesteps` (model timesteps, increasing)."""
  name: str
  timesteps: np.ndarray
  schedule: Schedule  # respaced: entry i belongs to model timestep timesteps[i]
  init_carry: Callable[[jax.Array], Any]
  step: StepFn
  # generation starts from x_T = noise * this (diffusers' Euler starts at
  # σ_max rather than √(σ_max² + 1): diffusers_schedulers.py sets it)
  init_noise_scale: float = 1.0

  @property
  def num_steps(self) -> int:
    return len(self.timesteps)

  @staticmethod
  def img2img_start(strength: float, num_steps: int) -> int:
    """Grid index img2img starts from: s·n steps are run (-1: none)."""
    return int(round(strength * num_steps)) - 1

  def sample(self, eps_fn: EpsFn, key: jax.Array, x_T: jax.Array, *,
             start: int | None = None, capture_every: int = 0,
             after_step: AfterStep | None = None
             ) -> tuple[jax.Array, jax.Array | None]:
    """Runs steps start, start-1, ..., 0 (start defaults to the last index).

    With `capture_every = k > 0` it also returns frames [1 + ceil(n/k), ...]:
    x before the first step and after every k-th step (and the last), without
    holding every state. `after_step(x, i, key)` may change x after the step
    from index i (inpainting puts the known pixels back there).
    """
    n = self.num_steps if start is None else start + 1
    if n <= 0:
      return x_T, (x_T[None] if capture_every else None)
    indices = jnp.arange(n - 1, -1, -1)

    def body(carry, i):
      inner, frames = carry
      inner = self.step(eps_fn, inner, i, jax.random.fold_in(key, i))
      if after_step is not None:
        x = after_step(inner[0], i, jax.random.fold_in(key, i + self.num_steps))
        inner = (x,) + tuple(inner[1:])
      if capture_every:
        done = n - i  # steps taken so far
        slot = jnp.where((done % capture_every == 0) | (i == 0),
                         (done + capture_every - 1) // capture_every, -1)
        frames = jax.lax.cond(
            slot >= 0,
            lambda f: jax.lax.dynamic_update_index_in_dim(f, inner[0], slot, 0),
            lambda f: f, frames)
      return (inner, frames), None

    frames = None
    if capture_every:
      num_frames = 1 + -(-n // capture_every)
      frames = jnp.zeros((num_frames,) + x_T.shape, x_T.dtype).at[0].set(x_T)
    (inner, frames), _ = jax.lax.scan(body, (self.init_carry(x_T), frames),
                                      indices)
    return inner[0], frames


def _respaced(betas: np.ndarray, num_steps: int, spacing: str
              ) -> tuple[np.ndarray, Schedule]:
  timesteps = space_timesteps(len(betas), num_steps, spacing)
  if len(timesteps) == len(betas):
    new_betas = np.asarray(betas, np.float64)  # exactly the original process
  else:
    new_betas = respace_betas(betas, timesteps)
  return timesteps, make_schedule(new_betas)


def _model_t(timesteps: np.ndarray, i: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.full(x.shape[:1], jnp.asarray(timesteps, jnp.int32)[i])


def ddpm_sampler(betas: np.ndarray, num_steps: int | None = None, *,
                 var_type: str = 'fixedlarge', clip_x0: bool = True,
                 spacing: str = 'uniform') -> Sampler:
  """Ancestral sampling (Ho et al., Algorithm 2) over all T steps or a
  respaced subset (betas recomputed as in improved-diffusion)."""
  timesteps, s = _respaced(betas, num_steps or len(betas), spacing)
  log_var = diffusion.reverse_log_variance(s, var_type)

  def step(eps_fn, carry, i, key):
    (x,) = carry
    i_B = jnp.full(x.shape[:1], i)
    eps = eps_fn(x, _model_t(timesteps, i, x))
    mean, _ = diffusion.p_mean(s, eps, x, i_B, clip_x0)
    noise = jax.random.normal(key, x.shape, x.dtype)
    std = jnp.where(i > 0, jnp.exp(0.5 * log_var[i]), 0.0).astype(x.dtype)
    return (mean + std * noise,)

  return Sampler('ddpm', timesteps, s, lambda x: (x,), step)


def _x0_and_eps(s: Schedule, eps: jax.Array, x: jax.Array, i_B: jax.Array,
                clip_x0: bool) -> tuple[jax.Array, jax.Array]:
  """x0 from ε; with clipping, ε is recomputed from the clipped x0."""
  x0 = diffusion.x0_from_eps(s, x, i_B, eps)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = diffusion.eps_from_x0(s, x, i_B, x0)
  return x0, eps


def ddim_sampler(betas: np.ndarray, num_steps: int | None = None, *,
                 eta: float = 0.0, clip_x0: bool = True,
                 spacing: str = 'uniform') -> Sampler:
  """DDIM (Song et al., 2021). η = 0 is deterministic; η = 1 has DDPM's
  posterior variance on the same (respaced) grid."""
  timesteps, s = _respaced(betas, num_steps or len(betas), spacing)
  ab = np.asarray(s.alphas_cumprod, np.float64)
  ab_prev = np.append(1.0, ab[:-1])
  sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
  dir_coef = np.sqrt(np.maximum(1 - ab_prev - sigma ** 2, 0.0))
  sigma, dir_coef, sqrt_ab_prev = (jnp.asarray(a, jnp.float32) for a in
                                   (sigma, dir_coef, np.sqrt(ab_prev)))

  def step(eps_fn, carry, i, key):
    (x,) = carry
    i_B = jnp.full(x.shape[:1], i)
    x0, eps = _x0_and_eps(s, eps_fn(x, _model_t(timesteps, i, x)), x, i_B, clip_x0)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return (sqrt_ab_prev[i] * x0 + dir_coef[i] * eps + sigma[i] * noise,)

  return Sampler('ddim', timesteps, s, lambda x: (x,), step)


def dpmpp_2m_sampler(betas: np.ndarray, num_steps: int | None = None, *,
                     clip_x0: bool = True, spacing: str = 'uniform') -> Sampler:
  """DPM-Solver++(2M) (Lu et al., 2022): second-order multistep in the data
  prediction, first order on the first step and on the final step to t=0.
  spacing='karras' runs it on Karras's σ grid ("DPM++ 2M Karras")."""
  if spacing == 'karras':
    return _dpmpp_2m_sigma_sampler(betas, num_steps, clip_x0)
  timesteps, s = _respaced(betas, num_steps or len(betas), spacing)
  ab = np.asarray(s.alphas_cumprod, np.float64)
  ab_to = np.append(1.0, ab[:-1])               # target of step i is i-1
  alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
  alpha_to, sigma_to = np.sqrt(ab_to), np.sqrt(1 - ab_to)
  lam = np.log(alpha) - np.log(sigma)
  with np.errstate(divide='ignore'):
    lam_to = np.log(alpha_to) - np.log(sigma_to)  # +inf at the final step
  h = lam_to - lam
  exp_neg_h = (sigma_to * alpha) / (alpha_to * sigma)  # e^{-h}; 0 at the end
  coef_x = sigma_to / sigma
  coef_d = alpha_to * (1.0 - exp_neg_h)
  # 1/r = h_i / h_{i+1}: the previous step went from i+1 to i.
  inv_r = np.zeros_like(h)
  inv_r[1:-1] = h[1:-1] / h[2:]
  second = np.zeros(len(h), bool)
  second[1:-1] = True                           # never on the final step
  if timesteps[0] == 0 and len(second) > 1:
    # t=0 has σ≈0.01: the step into it is the real final step, and its huge
    # jump in λ makes the 2M extrapolation unstable (DPM-Solver's
    # lower_order_final).
    second[1] = False
  coef_x, coef_d, inv_r = (jnp.asarray(a, jnp.float32) for a in (coef_x, coef_d, inv_r))
  second = jnp.asarray(second)

  def step(eps_fn, carry, i, key):
    del key  # deterministic
    x, x0_prev, have_prev = carry
    i_B = jnp.full(x.shape[:1], i)
    x0, _ = _x0_and_eps(s, eps_fn(x, _model_t(timesteps, i, x)), x, i_B, clip_x0)
    use2 = second[i] & have_prev
    d = jnp.where(use2, x0 + 0.5 * inv_r[i] * (x0 - x0_prev), x0)
    return (coef_x[i] * x + coef_d[i] * d, x0, jnp.asarray(True))

  init = lambda x: (x, jnp.zeros_like(x), jnp.asarray(False))
  return Sampler('dpm++2m', timesteps, s, init, step)


# --- Samplers in σ-parametrisation (Karras et al., 2022; k-diffusion) ---
#
# The ε-model is a discrete VP model: x_t = √ᾱ_t (x0 + σ_t ε) with
# σ_t = √((1 - ᾱ_t)/ᾱ_t). These samplers integrate the probability-flow ODE
# (or its ancestral SDE) in the variance-exploding variable x/√ᾱ over a grid of
# σ's, and ask the model at t(σ), found by interpolation in log σ over the
# model's own σ table (k-diffusion's DiscreteSchedule.sigma_to_t). The carry
# stays the VP x at grid index i, so img2img, inpainting and frame capture work
# as with the other samplers; the step from index 0 goes to σ = 0.

def model_sigmas(betas: np.ndarray) -> np.ndarray:
  """σ_t = √((1 - ᾱ_t)/ᾱ_t) of the discrete model, [T] increasing (float64)."""
  ab = np.cumprod(1.0 - np.asarray(betas, np.float64))
  return np.sqrt((1.0 - ab) / ab)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int,
                  rho: float = 7.0) -> np.ndarray:
  """Karras et al. (2022), eq. 5, increasing: σ_0 = σ_min, σ_{n-1} = σ_max."""
  if n == 1:
    return np.array([sigma_max])
  ramp = np.linspace(0.0, 1.0, n)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (lo + ramp * (hi - lo)) ** rho


def sigma_to_t(sigma: jax.Array, log_sigmas_T: np.ndarray) -> jax.Array:
  """The (float) model timestep of σ: linear interpolation in log σ."""
  return jnp.interp(jnp.log(sigma), jnp.asarray(log_sigmas_T, jnp.float32),
                    jnp.arange(len(log_sigmas_T), dtype=jnp.float32))


def sigma_grid(betas: np.ndarray, num_steps: int, spacing: str) -> np.ndarray:
  """The increasing σ grid of a σ-sampler: the model's own σ's at the
  spaced timesteps, or Karras's ρ = 7 spacing between the model's ends."""
  table = model_sigmas(betas)
  if spacing == 'karras':
    return karras_sigmas(table[0], table[-1], num_steps)
  if spacing not in options.SPACINGS:
    raise ValueError(f'unknown spacing {spacing!r}; choose one of {options.SPACINGS}')
  return table[space_timesteps(len(betas), num_steps, spacing)]


def _sigma_schedule(sigmas: np.ndarray) -> Schedule:
  """A schedule whose ᾱ_i = 1/(1 + σ_i²): q_sample at grid index i noises to σ_i."""
  ab = 1.0 / (1.0 + np.asarray(sigmas, np.float64) ** 2)
  return make_schedule(1.0 - ab / np.append(1.0, ab[:-1]))


def _sigma_setup(betas: np.ndarray, num_steps: int | None, spacing: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(σ grid [n] increasing, log σ of the model's table [T], the grid's model
  timesteps [n]) of a σ-sampler."""
  sig = sigma_grid(betas, num_steps or len(betas), spacing)
  log_table = np.log(model_sigmas(betas))
  return sig, log_table, np.interp(np.log(sig), log_table, np.arange(len(betas)))


def _denoiser(eps_fn: EpsFn, log_table: np.ndarray, clip_x0: bool) -> Callable:
  """D(x; σ) for x in the VE variable x/√ᾱ: the model sees x/√(1 + σ²) at t(σ)."""
  def denoise(x, sigma):
    t_B = jnp.full(x.shape[:1], sigma_to_t(sigma, log_table))
    x0 = x - sigma * eps_fn(x / jnp.sqrt(1.0 + sigma ** 2), t_B)
    return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0
  return denoise


def _sigma_sampler(name: str, betas: np.ndarray, num_steps: int | None,
                   spacing: str, clip_x0: bool, update: Callable) -> Sampler:
  """A Sampler whose step converts the VP carry to x/√ᾱ, calls
  update(denoise, x, σ_i, σ_next, key) and converts back."""
  sig, log_table, t_grid = _sigma_setup(betas, num_steps, spacing)
  sig_j = jnp.asarray(sig, jnp.float32)
  sig_next = jnp.asarray(np.append(0.0, sig[:-1]), jnp.float32)

  def step(eps_fn, carry, i, key):
    (x_vp,) = carry
    s_i, s_next = sig_j[i], sig_next[i]
    x = x_vp * jnp.sqrt(1.0 + s_i ** 2)
    x = update(_denoiser(eps_fn, log_table, clip_x0), x, s_i, s_next, key)
    return (x / jnp.sqrt(1.0 + s_next ** 2),)

  return Sampler(name, t_grid, _sigma_schedule(sig), lambda x: (x,), step)


def euler_sampler(betas: np.ndarray, num_steps: int | None = None, *,
                  clip_x0: bool = True, spacing: str = 'uniform') -> Sampler:
  """Euler's method on the probability-flow ODE (Karras et al., Alg. 1 with
  no churn; k-diffusion's sample_euler)."""
  def update(denoise, x, s, s_next, key):
    d = (x - denoise(x, s)) / s
    return x + d * (s_next - s)
  return _sigma_sampler('euler', betas, num_steps, spacing, clip_x0, update)


def euler_ancestral_sampler(betas: np.ndarray, num_steps: int | None = None, *,
                            eta: float = 1.0, clip_x0: bool = True,
                            spacing: str = 'uniform') -> Sampler:
  """Euler ancestral (k-diffusion's sample_euler_ancestral): an Euler step to
  σ_down, then fresh noise of std σ_up; η = 0 is `euler`."""
  def update(denoise, x, s, s_next, key):
    s_up = jnp.minimum(s_next, eta * jnp.sqrt(
        jnp.maximum(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2, 0.0)))
    s_down = jnp.sqrt(jnp.maximum(s_next ** 2 - s_up ** 2, 0.0))
    d = (x - denoise(x, s)) / s
    return x + d * (s_down - s) + s_up * jax.random.normal(key, x.shape, x.dtype)
  return _sigma_sampler('euler_a', betas, num_steps, spacing, clip_x0, update)


def heun_sampler(betas: np.ndarray, num_steps: int | None = None, *,
                 clip_x0: bool = True, spacing: str = 'uniform') -> Sampler:
  """Heun's second-order method (Karras et al., Alg. 1); the final step to
  σ = 0 is an Euler step. Two model calls per step but the last."""
  def update(denoise, x, s, s_next, key):
    d = (x - denoise(x, s)) / s
    x_e = x + d * (s_next - s)

    def correct():
      d2 = (x_e - denoise(x_e, s_next)) / s_next
      return x + 0.5 * (d + d2) * (s_next - s)
    return jax.lax.cond(s_next > 0, correct, lambda: x_e)
  return _sigma_sampler('heun', betas, num_steps, spacing, clip_x0, update)


def dpm2_sampler(betas: np.ndarray, num_steps: int | None = None, *,
                 clip_x0: bool = True, spacing: str = 'uniform') -> Sampler:
  """DPM-Solver-2 as in k-diffusion's sample_dpm_2: the derivative at the
  log-midpoint σ_mid = √(σ σ_next); the final step to σ = 0 is Euler. Two
  model calls per step but the last."""
  def update(denoise, x, s, s_next, key):
    d = (x - denoise(x, s)) / s

    def midpoint():
      s_mid = jnp.sqrt(s * s_next)
      x_mid = x + d * (s_mid - s)
      return x + (x_mid - denoise(x_mid, s_mid)) / s_mid * (s_next - s)
    return jax.lax.cond(s_next > 0, midpoint, lambda: x + d * (s_next - s))
  return _sigma_sampler('dpm2', betas, num_steps, spacing, clip_x0, update)


def _dpmpp_2m_sigma_sampler(betas: np.ndarray, num_steps: int | None,
                            clip_x0: bool) -> Sampler:
  """k-diffusion's sample_dpmpp_2m on Karras's σ grid, carry in VP x."""
  sig, log_table, t_grid = _sigma_setup(betas, num_steps, 'karras')
  n = len(sig)
  sig_next = np.append(0.0, sig[:-1])
  lam = -np.log(sig)
  with np.errstate(divide='ignore'):
    lam_next = -np.log(sig_next)                 # +inf at the final step
  h = lam_next - lam
  h_last = np.zeros(n)
  h_last[:-1] = lam[:-1] - lam[1:]               # the step from i+1 to i
  with np.errstate(divide='ignore', invalid='ignore'):
    inv_2r = np.where(np.isfinite(h), 0.5 * h / np.where(h_last > 0, h_last, 1.0), 0.0)
  second = np.isfinite(h) & (np.arange(n) < n - 1)   # not on the first or final step
  coef = np.where(np.isfinite(h), -np.expm1(-np.where(np.isfinite(h), h, 0.0)), 1.0)
  ratio = sig_next / sig
  sig_j, inv_2r, coef, ratio = (jnp.asarray(a, jnp.float32)
                                for a in (sig, inv_2r, coef, ratio))
  sig_next_j, second = jnp.asarray(sig_next, jnp.float32), jnp.asarray(second)

  def step(eps_fn, carry, i, key):
    del key  # deterministic
    x_vp, old, have_prev = carry
    s_i = sig_j[i]
    x = x_vp * jnp.sqrt(1.0 + s_i ** 2)
    d = _denoiser(eps_fn, log_table, clip_x0)(x, s_i)
    use2 = second[i] & have_prev
    d_eff = jnp.where(use2, (1.0 + inv_2r[i]) * d - inv_2r[i] * old, d)
    x = ratio[i] * x + coef[i] * d_eff
    return (x / jnp.sqrt(1.0 + sig_next_j[i] ** 2), d, jnp.asarray(True))

  init = lambda x: (x, jnp.zeros_like(x), jnp.asarray(False))
  return Sampler('dpm++2m', t_grid, _sigma_schedule(sig), init, step)


SAMPLERS: dict[str, Callable[..., Sampler]] = {
    'ddpm': ddpm_sampler,
    'ddim': ddim_sampler,
    'dpm++2m': dpmpp_2m_sampler,
    'euler': euler_sampler,
    'euler_a': euler_ancestral_sampler,
    'heun': heun_sampler,
    'dpm2': dpm2_sampler,
}
assert tuple(SAMPLERS) == options.SAMPLERS


def make_sampler(name: str, betas: np.ndarray, num_steps: int | None = None,
                 **kwargs) -> Sampler:
  """Builds the named sampler; the step count fixes its timestep table."""
  if name not in SAMPLERS:
    raise ValueError(f'unknown sampler {name!r}; choose one of {options.SAMPLERS}')
  return SAMPLERS[name](betas, num_steps, **kwargs)
