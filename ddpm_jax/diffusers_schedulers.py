"""diffusers' schedulers as `samplers.Sampler`s, step for step.

`diffusers_sampler(name, scheduler_config, num_steps, prediction=...)` builds
the sampler that diffusers' DDIMScheduler (η = 0), EulerDiscreteScheduler,
EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler (DPM-Solver++
2M) or HeunDiscreteScheduler would run after `set_timesteps(num_steps)` on
that config: the same grid of timesteps handed to the model (floats where
diffusers keeps floats, rounded where it rounds), the same σ's, the same
conversion of the model's raw output (ε, v or x0) to x0 with the scheduler's
own σ, and the same update in float32 with the coefficients diffusers
computes in float32. torch's betas (torch.linspace) and ᾱ (cumprod, which
accumulates in double) are emulated bit for bit; the σ table can differ by
1 ulp (torch's vectorised float32 sqrt is not always correctly rounded), and
the σ-schedulers' state goes through the VP form between steps (x_ve is
x_vp·√(1 + σ²) again at the next step: about 1 ulp per step).

The contract with `samplers.Sampler`:

* `step(eps_fn, carry, i, key)` calls `eps_fn(x_in, t_B)` for the model's RAW
  output (what the config's model predicts: `prediction`) at the input
  diffusers hands the UNet after `scale_model_input`, and the (float32)
  model timesteps `t_B`. Guidance is linear, so `sampling.guided_eps_fn`
  works on raw outputs as well.
* carry[0] is always the variance-preserving x at grid index i (grid index
  n-1 is diffusers' first step, index 0 its last): x_vp = x_ve / √(1 + σ_i²)
  for the σ-schedulers, whose own variable is x_ve. After the step from
  index 0 the carry is exactly what diffusers returns (the final latents).
* `schedule.alphas_cumprod[i]` is ᾱ of grid entry i: ᾱ[t_i] for DDIM and
  1/(1 + σ_i²) for the σ-schedulers, so img2img (`diffusion.q_sample` at the
  start index) is diffusers' `add_noise` and inpainting's re-noising of the
  known region (`sampling.replace_known`) is its `add_noise` at the next
  timestep.
* Text-to-image starts from `x_T = noise * sampler.init_noise_scale`: the
  VP form of diffusers' `latents * init_noise_sigma` (1 for DDIM and DPM++,
  and for Euler with 'leading' spacing, whose init_noise_sigma is
  √(σ_max² + 1); σ_max/√(σ_max² + 1) for Euler with 'linspace'/'trailing'
  spacing, whose init_noise_sigma is σ_max). img2img starts from the noised
  image unscaled, as diffusers' `add_noise` does.
* img2img runs diffusers' `min(int(n * strength), n)` steps:
  `img2img_start(strength, n)` is the grid index it starts from.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import samplers
from ddpm_jax.schedules import Schedule, make_schedule

NAMES = ('ddim', 'euler', 'euler_a', 'dpm++2m', 'heun')
PREDICTIONS = ('epsilon', 'v_prediction', 'sample')
SPACINGS = ('leading', 'trailing', 'linspace')
# diffusers' default timestep_spacing per scheduler class (when a config
# does not name one, e.g. SD 1.x's PNDM scheduler_config.json).
DEFAULT_SPACING = {'ddim': 'leading', 'euler': 'linspace', 'euler_a': 'linspace',
                   'dpm++2m': 'linspace', 'heun': 'linspace'}
# ... and default beta range (HeunDiscreteScheduler's is SD's).
DEFAULT_BETAS = {'heun': (0.00085, 0.012)}
# Switches each class reads that we do not implement (a class ignores the
# keys of other classes, as diffusers' from_config does).
UNSUPPORTED = {
    'ddim': ('thresholding', 'rescale_betas_zero_snr'),
    'euler': ('rescale_betas_zero_snr', 'use_exponential_sigmas',
              'use_beta_sigmas'),
    'euler_a': ('rescale_betas_zero_snr',),
    'dpm++2m': ('thresholding', 'rescale_betas_zero_snr', 'use_exponential_sigmas',
                'use_beta_sigmas', 'use_lu_lambdas', 'use_flow_sigmas',
                'use_dynamic_shifting'),
    'heun': ('use_exponential_sigmas', 'use_beta_sigmas'),
}
# The classes with use_karras_sigmas.
KARRAS = ('euler', 'dpm++2m', 'heun')

F32 = np.float32


@dataclasses.dataclass(frozen=True)
class DiffusersSampler(samplers.Sampler):
  """A Sampler plus what diffusers' scheduler shows after set_timesteps."""
  init_noise_sigma: float = 1.0   # diffusers' (x_ve = latents * this)
  sigmas: np.ndarray | None = None  # scheduler.sigmas, float32, decreasing (+ final)
  model_timesteps: np.ndarray | None = None  # scheduler.timesteps (diffusers' order)

  @staticmethod
  def img2img_start(strength: float, num_steps: int) -> int:
    """diffusers' img2img start, replacing Sampler's rounding rule."""
    return img2img_start(strength, num_steps)


# --- torch's float32 tables, emulated -----------------------------------

def _torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
  """torch.linspace(start, end, n, dtype=float32) bit for bit: a float32
  step, the first half counted up from start and the second down from end."""
  s, e = F32(start), F32(end)
  if n == 1:
    return np.array([s], F32)
  step = (e - s) / F32(n - 1)
  i = np.arange(n)
  s, e, step = float(s), float(e), float(step)
  out = np.where(i < n // 2, s + step * i, e - step * (n - 1 - i))
  return out.astype(F32)


def _alpha_bar_cosine(num: int, max_beta: float = 0.999) -> np.ndarray:
  f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - f((i + 1) / num) / f(i / num), max_beta)
                   for i in range(num)], F32)


def train_betas(cfg: Mapping[str, Any], name: str = 'ddim') -> np.ndarray:
  """The float32 betas [T] scheduler class `name` makes of the config, as
  diffusers' torch code makes them."""
  T = int(cfg.get('num_train_timesteps', 1000))
  if cfg.get('trained_betas') is not None:
    b = np.asarray(cfg['trained_betas'], F32)
    if b.shape != (T,):
      raise ValueError(f'trained_betas has {b.size} entries, '
                       f'num_train_timesteps is {T}')
    return b
  kind = cfg.get('beta_schedule', 'linear')
  start0, end0 = DEFAULT_BETAS.get(name, (1e-4, 0.02))
  start, end = cfg.get('beta_start', start0), cfg.get('beta_end', end0)
  if kind == 'linear':
    return _torch_linspace_f32(start, end, T)
  if kind == 'scaled_linear':
    return _torch_linspace_f32(start ** 0.5, end ** 0.5, T) ** 2
  if kind == 'squaredcos_cap_v2':
    return _alpha_bar_cosine(T)
  raise ValueError(f'beta_schedule {kind!r} is not supported (linear, '
                   f'scaled_linear, squaredcos_cap_v2, or trained_betas)')


def train_alphas_cumprod(cfg: Mapping[str, Any], name: str = 'ddim') -> np.ndarray:
  """float32 ᾱ [T]: torch.cumprod accumulates float32 in double."""
  alphas = (F32(1.0) - train_betas(cfg, name)).astype(np.float64)
  return np.cumprod(alphas).astype(F32)


def _train_sigmas(ac: np.ndarray) -> np.ndarray:
  """float32 σ_t = √((1 - ᾱ)/ᾱ) [T], increasing with t."""
  return np.sqrt((F32(1.0) - ac) / ac).astype(F32)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
  """diffusers' _sigma_to_t: a float timestep per σ, linear in log σ over
  the float32 table (the same mixed float32/64 arithmetic)."""
  sigma = np.asarray(sigma, np.float64)
  log_sigma = np.log(np.maximum(sigma, 1e-10))
  dists = log_sigma - log_sigmas[:, np.newaxis]
  low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(
      max=log_sigmas.shape[0] - 2)
  high_idx = low_idx + 1
  low, high = log_sigmas[low_idx], log_sigmas[high_idx]
  w = np.clip((low - log_sigma) / (low - high), 0, 1)
  return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int,
                  rho: float = 7.0) -> np.ndarray:
  """diffusers' _convert_to_karras, decreasing (float64)."""
  ramp = np.linspace(0, 1, n)
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  return (hi + ramp * (lo - hi)) ** rho


# --- the timestep grids -------------------------------------------------

def _spacing(name: str, cfg: Mapping[str, Any]) -> str:
  spacing = cfg.get('timestep_spacing') or DEFAULT_SPACING[name]
  if spacing not in SPACINGS:
    raise ValueError(f'timestep_spacing {spacing!r} is not one of {SPACINGS}')
  return spacing


def _int_timesteps(spacing: str, T: int, n: int, offset: int) -> np.ndarray:
  """DDIMScheduler.set_timesteps (int64, decreasing)."""
  if spacing == 'linspace':
    ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
  elif spacing == 'leading':
    ratio = T // n
    ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
    ts += offset
  else:
    ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
  return ts


def _float_timesteps(spacing: str, T: int, n: int, offset: int) -> np.ndarray:
  """Euler(Ancestral)DiscreteScheduler.set_timesteps (float32, decreasing)."""
  if spacing == 'linspace':
    return np.linspace(0, T - 1, n, dtype=F32)[::-1].copy()
  if spacing == 'leading':
    ratio = T // n
    ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(F32)
    return ts + F32(offset)
  ts = np.arange(T, 0, -T / n).round().copy().astype(F32)
  return ts - F32(1)


def _dpm_timesteps(spacing: str, T: int, n: int, offset: int,
                   last: int) -> np.ndarray:
  """DPMSolverMultistepScheduler.set_timesteps (int64, decreasing): n + 1
  points with the last dropped for 'linspace' and 'leading'."""
  if spacing == 'linspace':
    return (np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy()
            .astype(np.int64))
  if spacing == 'leading':
    ratio = last // (n + 1)
    ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
    return ts + offset
  return np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1


# --- config checks ------------------------------------------------------

def _refuse_flags(cfg: Mapping[str, Any], flags: tuple[str, ...], name: str):
  for flag in flags:
    if cfg.get(flag):
      raise ValueError(f'{flag}={cfg[flag]!r} is not supported for {name}')


def _check(cfg: Mapping[str, Any], name: str, prediction: str, num_steps: int):
  if prediction not in PREDICTIONS:
    raise ValueError(f'prediction {prediction!r} is not one of {PREDICTIONS}')
  T = int(cfg.get('num_train_timesteps', 1000))
  if not 1 <= num_steps <= T:
    raise ValueError(f'num_steps must be in [1, {T}], got {num_steps}')
  _refuse_flags(cfg, UNSUPPORTED[name], name)


def _sigma_schedule(sigmas_inc: np.ndarray) -> Schedule:
  """ᾱ_i = 1/(1 + σ_i²) over the increasing grid."""
  return _ab_schedule(1.0 / (1.0 + np.asarray(sigmas_inc, np.float64) ** 2))


def _ab_schedule(ab_inc: np.ndarray) -> Schedule:
  """The Schedule whose ᾱ_i are the grid's (strictly decreasing)."""
  ab = np.asarray(ab_inc, np.float64)
  if np.any(np.diff(ab) >= 0) or not np.all((ab > 0) & (ab < 1)):
    raise ValueError('diffusers\' grid for these settings repeats a noise '
                     'level (or leaves the trained range); use fewer steps or '
                     'another timestep_spacing')
  return make_schedule(1.0 - ab / np.append(1.0, ab[:-1]))


def _t_B(t: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.full(x.shape[:1], t, jnp.float32)


def _j(a) -> jax.Array:
  return jnp.asarray(np.asarray(a, F32))


# --- DDIM ---------------------------------------------------------------

def _ddim(cfg, n, prediction) -> DiffusersSampler:
  T = int(cfg.get('num_train_timesteps', 1000))
  ac = train_alphas_cumprod(cfg, 'ddim')
  final = F32(1.0) if cfg.get('set_alpha_to_one', True) else ac[0]
  spacing = _spacing('ddim', cfg)
  ts = _int_timesteps(spacing, T, n, int(cfg.get('steps_offset', 0)))
  if ts.max() >= T:
    raise ValueError(f'DDIM with steps_offset {cfg.get("steps_offset")} and '
                     f'{n} steps reaches timestep {ts.max()} >= {T}')
  # The step's target is t - T // n, whatever the grid's next entry is.
  prev = ts - T // n
  a_t = ac[ts]
  a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(F32)
  b_t = (F32(1) - a_t).astype(F32)
  sa, sb = np.sqrt(a_t), np.sqrt(b_t)
  sa_prev = np.sqrt(a_prev)
  dir_coef = np.sqrt((F32(1) - a_prev).astype(F32))   # η = 0
  clip = bool(cfg.get('clip_sample', True))
  clip_range = float(cfg.get('clip_sample_range', 1.0))
  # increasing grid order: index i is diffusers' step n-1-i
  inc = lambda a: a[::-1].copy()
  t_model, sa, sb, sa_prev, dir_coef = (_j(inc(a)) for a in
                                        (ts, sa, sb, sa_prev, dir_coef))

  def step(eps_fn, carry, i, key):
    del key
    (x,) = carry
    out = eps_fn(x, _t_B(t_model[i], x))
    if prediction == 'epsilon':
      x0, eps = (x - sb[i] * out) / sa[i], out
    elif prediction == 'sample':
      x0 = out
      eps = (x - sa[i] * x0) / sb[i]
    else:
      x0 = sa[i] * x - sb[i] * out
      eps = sa[i] * out + sb[i] * x
    if clip:
      x0 = jnp.clip(x0, -clip_range, clip_range)
    return ((sa_prev[i] * x0 + dir_coef[i] * eps).astype(x.dtype),)

  return DiffusersSampler(
      'ddim', inc(ts).astype(F32), _ab_schedule(inc(a_t)), lambda x: (x,), step,
      init_noise_sigma=1.0, init_noise_scale=1.0, sigmas=None,
      model_timesteps=ts.astype(F32))


# --- the σ schedulers: Euler, Euler ancestral, Heun ----------------------

def _euler_grid(name, cfg, n, karras, final_type='zero'
                ) -> tuple[np.ndarray, np.ndarray, float]:
  """(timesteps float32 [n], sigmas float32 [n+1], init_noise_sigma) of
  Euler/EulerAncestral/Heun before Heun's interleaving, decreasing."""
  T = int(cfg.get('num_train_timesteps', 1000))
  ac = train_alphas_cumprod(cfg, name)
  table = _train_sigmas(ac)
  spacing = _spacing(name, cfg)
  ts = _float_timesteps(spacing, T, n, int(cfg.get('steps_offset', 0)))
  if name == 'euler' and cfg.get('interpolation_type', 'linear') != 'linear':
    raise ValueError(f'interpolation_type {cfg["interpolation_type"]!r} is '
                     f'not supported (linear)')
  if name == 'euler' and cfg.get('timestep_type', 'discrete') != 'discrete':
    raise ValueError(f'timestep_type {cfg["timestep_type"]!r} is not '
                     f'supported (discrete)')
  sig = np.interp(ts, np.arange(0, len(table)), table)
  if karras:
    # a config's sigma_min/sigma_max (read by every class through
    # from_config), else Euler's and Heun's Karras ends are the SPACED
    # grid's ends
    lo, hi = cfg.get('sigma_min'), cfg.get('sigma_max')
    lo = sig[-1].item() if lo is None else lo
    hi = sig[0].item() if hi is None else hi
    sig = karras_sigmas(lo, hi, n)
    ts = sigma_to_t(sig, np.log(table)).astype(F32)
  if final_type == 'sigma_min':
    last = float(table[0])
  elif final_type == 'zero':
    last = 0.0
  else:
    raise ValueError(f'final_sigmas_type {final_type!r} is not supported')
  sigmas = np.concatenate([sig, [last]]).astype(F32)
  smax = sigmas.max()
  if spacing in ('linspace', 'trailing'):
    init = smax
  else:
    init = np.sqrt(smax * smax + F32(1)).astype(F32)
  return ts.astype(F32), sigmas, float(init)


def _to_x0(prediction: str, out, x_ve, sigma, c_in):
  """x0 of the raw output at σ, in x_ve (Euler's conversions)."""
  if prediction == 'epsilon':
    return x_ve - sigma * out
  if prediction == 'v_prediction':
    return out * (-sigma / c_in) + x_ve / (sigma * sigma + 1)
  return out


def _sigma_tables(sigmas: np.ndarray):
  """Increasing-grid jnp tables: σ_i, σ_next (diffusers' sigmas[k + 1]),
  c_i = √(σ_i² + 1) and the VP scale after the step (1 after the last)."""
  n = len(sigmas) - 1
  s = sigmas[:n][::-1].copy()
  s_next = sigmas[1:][::-1].copy()
  c = np.sqrt(s * s + F32(1)).astype(F32)
  c_next = np.sqrt(s_next * s_next + F32(1)).astype(F32)
  c_next[0] = 1.0       # the last step returns diffusers' final latents
  return s, s_next, c, c_next


def _euler(cfg, n, prediction, karras, ancestral, step_noise, name):
  final_type = 'zero' if ancestral else cfg.get('final_sigmas_type', 'zero')
  ts, sigmas, init = _euler_grid(name, cfg, n, karras, final_type)
  s, s_next, c, c_next = _sigma_tables(sigmas)
  c0 = float(np.sqrt(sigmas[0] * sigmas[0] + F32(1)))
  if ancestral:
    sf, st = s, s_next
    s_up = np.sqrt((st * st * (sf * sf - st * st) / (sf * sf)).astype(F32))
    # diffusers takes √ of a rounding-negative number here on some grids
    # (NaN latents, e.g. squaredcos_cap_v2 trailing 3 steps); 0 instead.
    s_down = np.sqrt(np.maximum(st * st - s_up * s_up, F32(0)).astype(F32))
    dt = (s_down - sf).astype(F32)
  else:
    s_up = np.zeros_like(s)
    dt = (s_next - s).astype(F32)
  noise_tab = None
  if step_noise is not None:
    if not ancestral:
      raise ValueError('step_noise is for euler_a only')
    noise_tab = jnp.asarray(np.asarray(step_noise, F32))
    if noise_tab.shape[0] != n:
      raise ValueError(f'step_noise has {noise_tab.shape[0]} draws, '
                       f'num_steps is {n}')
  t_model = ts[::-1].copy()
  t_j, s_j, c_j, cn_j, dt_j, up_j = (_j(a) for a in
                                     (t_model, s, c, c_next, dt, s_up))

  def step(eps_fn, carry, i, key):
    (x_vp,) = carry
    sigma = s_j[i]
    x = x_vp * c_j[i]                       # diffusers' x_ve
    out = eps_fn(x / c_j[i], _t_B(t_j[i], x))   # scale_model_input
    x0 = _to_x0(prediction, out, x, sigma, c_j[i])
    d = (x - x0) / sigma
    prev = x + d * dt_j[i]
    if ancestral:
      if noise_tab is not None:
        z = noise_tab[n - 1 - i].astype(x.dtype)
      else:
        z = jax.random.normal(key, x.shape, x.dtype)
      prev = prev + z * up_j[i]
    return ((prev / cn_j[i]).astype(x_vp.dtype),)

  return DiffusersSampler(
      name, t_model.astype(F32), _sigma_schedule(s), lambda x: (x,), step,
      init_noise_sigma=init, init_noise_scale=init / c0, sigmas=sigmas,
      model_timesteps=ts)


def _heun(cfg, n, prediction, karras):
  """HeunDiscreteScheduler: an Euler step, then (but on the step to σ = 0)
  the model at the Euler point and σ_next and the average derivative."""
  ts, sigmas, init = _euler_grid('heun', cfg, n, karras)
  s, s_next, c, c_next = _sigma_tables(sigmas)
  c_at_next = np.sqrt(s_next * s_next + F32(1)).astype(F32)
  c0 = float(np.sqrt(sigmas[0] * sigmas[0] + F32(1)))
  dt = (s_next - s).astype(F32)
  clip = bool(cfg.get('clip_sample', False))
  clip_range = float(cfg.get('clip_sample_range', 1.0))
  to_x0 = lambda out, x, sigma, c_in: (
      jnp.clip(_to_x0(prediction, out, x, sigma, c_in), -clip_range, clip_range)
      if clip else _to_x0(prediction, out, x, sigma, c_in))
  t_model = ts[::-1].copy()
  t_next = np.append(F32(0), t_model[:-1]).astype(F32)  # unused at index 0
  t_j, tn_j, s_j, sn_j, c_j, cn_j, can_j, dt_j = (_j(a) for a in (
      t_model, t_next, s, s_next, c, c_next, c_at_next, dt))

  def step(eps_fn, carry, i, key):
    del key
    (x_vp,) = carry
    x = x_vp * c_j[i]
    out = eps_fn(x / c_j[i], _t_B(t_j[i], x))
    x0 = to_x0(out, x, s_j[i], c_j[i])
    d = (x - x0) / s_j[i]
    x_e = x + d * dt_j[i]

    def correct():
      out2 = eps_fn(x_e / can_j[i], _t_B(tn_j[i], x_e))
      x0_2 = to_x0(out2, x_e, sn_j[i], can_j[i])
      d2 = (x_e - x0_2) / sn_j[i]
      return x + (d + d2) / 2 * dt_j[i]
    prev = jax.lax.cond(sn_j[i] > 0, correct, lambda: x_e)
    return ((prev / cn_j[i]).astype(x_vp.dtype),)

  # diffusers interleaves: timesteps [t0, t1, t1, ..., t_{n-1}, t_{n-1}]
  return DiffusersSampler(
      'heun', t_model.astype(F32), _sigma_schedule(s), lambda x: (x,), step,
      init_noise_sigma=init, init_noise_scale=init / c0,
      sigmas=np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2),
                             sigmas[-1:]]).astype(F32),
      model_timesteps=np.concatenate([ts[:1], np.repeat(ts[1:], 2)]))


# --- DPM-Solver++ 2M ------------------------------------------------------

def _dpmpp_2m(cfg, n, prediction, karras) -> DiffusersSampler:
  T = int(cfg.get('num_train_timesteps', 1000))
  order = int(cfg.get('solver_order', 2))
  if order not in (1, 2):
    raise ValueError(f'solver_order {order} is not supported (1, 2)')
  algo = cfg.get('algorithm_type', 'dpmsolver++')
  if algo not in ('dpmsolver++', 'deis'):
    raise ValueError(f'algorithm_type {algo!r} is not supported (dpmsolver++)')
  solver = cfg.get('solver_type', 'midpoint')
  if solver in ('logrho', 'bh1', 'bh2'):
    solver = 'midpoint'       # as diffusers re-registers them
  if solver not in ('midpoint', 'heun'):
    raise ValueError(f'solver_type {solver!r} is not supported')
  if cfg.get('variance_type') is not None:
    raise ValueError(f'variance_type {cfg["variance_type"]!r} is not supported')
  ac = train_alphas_cumprod(cfg, 'dpm++2m')
  lam = (np.log(np.sqrt(ac)) - np.log(np.sqrt(F32(1) - ac))).astype(F32)
  clipped = int(np.searchsorted(lam[::-1], cfg.get('lambda_min_clipped',
                                                   -float('inf'))))
  last = T - clipped
  table = _train_sigmas(ac)
  log_table = np.log(table)
  spacing = _spacing('dpm++2m', cfg)
  ts = _dpm_timesteps(spacing, T, n, int(cfg.get('steps_offset', 0)), last)
  if karras:
    # a config's sigma_min/sigma_max, else the whole table's ends
    lo, hi = cfg.get('sigma_min'), cfg.get('sigma_max')
    flipped = table[::-1]
    lo = flipped[-1].item() if lo is None else lo
    hi = flipped[0].item() if hi is None else hi
    sig = karras_sigmas(lo, hi, n)
    ts = sigma_to_t(sig, log_table)
    if cfg.get('beta_schedule') != 'squaredcos_cap_v2':
      ts = ts.round()
  else:
    sig = np.interp(ts, np.arange(0, len(table)), table)
  final_type = cfg.get('final_sigmas_type', 'zero')
  if final_type == 'sigma_min':
    sigma_last = float(np.sqrt((F32(1) - ac[0]) / ac[0]))
  elif final_type == 'zero':
    sigma_last = 0.0
  else:
    raise ValueError(f'final_sigmas_type {final_type!r} is not supported')
  sigmas = np.concatenate([sig, [sigma_last]]).astype(F32)
  ts = ts.astype(np.int64)
  n = len(ts)

  # float32 scalars exactly as the torch 0-d tensors compute them
  def alpha_sigma(sv):
    a = (F32(1) / np.sqrt(sv * sv + F32(1))).astype(F32)
    return a, (sv * a).astype(F32)

  with np.errstate(divide='ignore'):
    alpha, sig_t = alpha_sigma(sigmas)
    lam_k = (np.log(alpha) - np.log(sig_t)).astype(F32)   # +inf at σ = 0
  A = np.zeros(n, F32)
  B = np.zeros(n, F32)
  C = np.zeros(n, F32)
  inv_r = np.zeros(n, F32)
  second = np.zeros(n, bool)
  lower_final = (bool(cfg.get('euler_at_final', False))
                 or (bool(cfg.get('lower_order_final', True)) and n < 15)
                 or final_type == 'zero')
  with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
    for k in range(n):
      h = F32(lam_k[k + 1] - lam_k[k])
      A[k] = sig_t[k + 1] / sig_t[k]
      em = F32(np.exp(-h)) - F32(1)
      B[k] = alpha[k + 1] * em
      if k > 0 and order == 2 and not (k == n - 1 and lower_final):
        second[k] = True
        h0 = F32(lam_k[k] - lam_k[k - 1])
        inv_r[k] = F32(1.0) / F32(h0 / h)
        if solver == 'midpoint':
          C[k] = F32(0.5) * B[k]
        else:
          C[k] = -(alpha[k + 1] * (em / h + F32(1)))
  a_conv, s_conv = alpha[:n], sig_t[:n]
  inc = lambda a: a[::-1].copy()
  t_j, A_j, B_j, C_j, ir_j, ac_j, sc_j = (_j(inc(a)) for a in (
      ts, A, B, C, inv_r, a_conv, s_conv))
  second_j = jnp.asarray(inc(second))

  def step(eps_fn, carry, i, key):
    del key
    x, m_prev, have_prev = carry
    out = eps_fn(x, _t_B(t_j[i], x))
    if prediction == 'epsilon':
      m = (x - sc_j[i] * out) / ac_j[i]
    elif prediction == 'v_prediction':
      m = ac_j[i] * x - sc_j[i] * out
    else:
      m = out
    first = A_j[i] * x - B_j[i] * m
    d1 = ir_j[i] * (m - m_prev)
    two = A_j[i] * x - B_j[i] * m - C_j[i] * d1
    x_next = jnp.where(second_j[i] & have_prev, two, first)
    return (x_next.astype(x.dtype), m.astype(x.dtype), jnp.asarray(True))

  init = lambda x: (x, jnp.zeros_like(x), jnp.asarray(False))
  return DiffusersSampler(
      'dpm++2m', inc(ts).astype(F32), _sigma_schedule(inc(sigmas[:n])), init,
      step, init_noise_sigma=1.0, init_noise_scale=1.0, sigmas=sigmas,
      model_timesteps=ts.astype(F32))


# --- the factory ----------------------------------------------------------

def diffusers_sampler(name: str, scheduler: Mapping[str, Any], num_steps: int,
                      *, prediction: str, karras: bool = False,
                      step_noise: np.ndarray | None = None) -> DiffusersSampler:
  """The Sampler diffusers' scheduler `name` runs on `scheduler` (a diffusers
  scheduler config dict, of any scheduler class: its DDIM/PNDM keys are
  read as the named class would read them, absent keys take that class's
  defaults) with `num_steps` steps.

  name: 'ddim' (DDIMScheduler, η = 0), 'euler' (EulerDiscreteScheduler),
  'euler_a' (EulerAncestralDiscreteScheduler), 'dpm++2m'
  (DPMSolverMultistepScheduler: dpmsolver++, order 2, midpoint, lower order
  final) or 'heun' (HeunDiscreteScheduler).
  prediction: what the model's raw output is: 'epsilon', 'v_prediction' or
  'sample' (the config's prediction_type is not read: the caller decides).
  karras: use_karras_sigmas (euler, dpm++2m, heun; an error for the others);
  those three also take it from the config's use_karras_sigmas.
  step_noise [n, *x.shape] (euler_a only): the k-th step taken (k = n-1-i)
  adds step_noise[k] instead of noise drawn from the step's key.
  """
  cfg = dict(scheduler)
  num_steps = int(num_steps)
  if name not in NAMES:
    raise ValueError(f'unknown diffusers scheduler {name!r}; choose one of {NAMES}')
  _check(cfg, name, prediction, num_steps)
  if name in KARRAS:
    karras = bool(karras or cfg.get('use_karras_sigmas'))
  if step_noise is not None and name != 'euler_a':
    raise ValueError('step_noise is for euler_a only')
  if name == 'ddim':
    if karras:
      raise ValueError('ddim has no Karras sigmas')
    return _ddim(cfg, num_steps, prediction)
  if name == 'dpm++2m':
    return _dpmpp_2m(cfg, num_steps, prediction, karras)
  if name == 'heun':
    return _heun(cfg, num_steps, prediction, karras)
  if name == 'euler_a':
    if karras:
      raise ValueError('euler_a (EulerAncestralDiscreteScheduler) has no '
                       'Karras sigmas')
    if prediction == 'sample':
      raise ValueError('euler_a does not take prediction_type sample')
  return _euler(cfg, num_steps, prediction, karras, name == 'euler_a',
                step_noise, name)


def img2img_start(strength: float, num_steps: int) -> int:
  """The grid index diffusers' img2img starts from: it runs
  init_timestep = min(int(n * strength), n) steps (-1: none)."""
  return min(int(num_steps * strength), num_steps) - 1
