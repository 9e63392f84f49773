"""The sampling program built around a sampler: classifier-free guidance,
img2img (a start part-way down the grid), inpainting with the known pixels
re-imposed after every step and RePaint resampling, a latent model's
encode/decode around the scan, and `make_sample_fn`, which puts all of it in
one jitted function. The update rules themselves are samplers.py.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import diffusion
from ddpm_jax.diffusion import EpsFn
from ddpm_jax.errors import UserError
from ddpm_jax.samplers import Sampler
from ddpm_jax.schedules import Schedule
from ddpm_jax.xla_options import compiler_options


def seed_key(seed: int) -> jax.Array:
  """The random key of any Python integer seed (sampling, and a config's
  training seed). Seeds in [0, 2^32) give
  `jax.random.key(seed)`; any other seed folds its sign and every further
  32-bit word in, so distinct seeds give distinct keys (`key` alone wraps
  them modulo 2^32)."""
  seed = int(seed)
  if 0 <= seed < 2 ** 32:
    return jax.random.key(seed)
  n = abs(seed)
  key = jax.random.fold_in(jax.random.key(n & 0xFFFFFFFF), 1 if seed < 0 else 2)
  n >>= 32
  while n:
    key = jax.random.fold_in(key, n & 0xFFFFFFFF)
    n >>= 32
  return key


def replace_known(s: Schedule, x: jax.Array, known_x0: jax.Array,
                  known_mask: jax.Array, i: jax.Array, noise: jax.Array
                  ) -> jax.Array:
  """After the step from grid index i: keep x where mask = 1, elsewhere
  `known_x0` noised to index i-1 (clean after the last step)."""
  i_prev = jnp.full(known_x0.shape[:1], jnp.maximum(i - 1, 0))
  known = jnp.where(i > 0, diffusion.q_sample(s, known_x0, i_prev, noise), known_x0)
  return known_mask * x + (1.0 - known_mask) * known


def repaint_schedule(num_steps: int, jumps: int, jump_length: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(indices, up) of RePaint's resampling (Lugmayr et al., 2022): after each
  block of `jump_length` denoising steps (but the last block), go back up
  the block by forward noising and denoise it again, `jumps` times."""
  ops = []
  hi = num_steps - 1
  while hi >= 0:
    lo = max(hi - jump_length + 1, 0)
    down = [(i, False) for i in range(hi, lo - 1, -1)]
    ops += down
    if lo > 0:
      for _ in range(jumps):
        ops += [(i, True) for i in range(lo, hi + 1)] + down
    hi = lo - 1
  idx, up = zip(*ops)
  return np.asarray(idx, np.int32), np.asarray(up, bool)


def sample_inpaint_with_jumps(sampler: Sampler, eps_fn: EpsFn, key: jax.Array,
                              x_T: jax.Array, known_x0: jax.Array,
                              known_mask: jax.Array, jumps: int,
                              jump_length: int = 10) -> jax.Array:
  """Inpainting with RePaint resampling, as one scan over down/up steps, for
  every sampler. Going up from grid index i-1 to i is q(x_i | x_{i-1}) of the
  sampler's own schedule (a σ-sampler's is ᾱ_i = 1/(1 + σ_i²), so this adds
  noise of variance σ_i² − σ_{i-1}² to x/√ᾱ); it also restarts a multistep
  sampler's history (DPM++ 2M takes a first-order step after each jump)."""
  idx, up = repaint_schedule(sampler.num_steps, jumps, jump_length)
  s = sampler.schedule

  def body(carry, op):
    p, i, is_up = op
    k = jax.random.fold_in(key, p)

    def renoise(carry):  # q(x_i | x_{i-1}) of the respaced process
      x = carry[0]
      z = jax.random.normal(k, x.shape, x.dtype)
      b = s.betas[i].astype(x.dtype)
      return sampler.init_carry(jnp.sqrt(1.0 - b) * x + jnp.sqrt(b) * z)

    def denoise(carry):
      carry = sampler.step(eps_fn, carry, i, k)
      noise = jax.random.normal(jax.random.fold_in(k, 1), known_x0.shape,
                                known_x0.dtype)
      x = replace_known(s, carry[0], known_x0, known_mask, i, noise)
      return (x,) + tuple(carry[1:])
    return jax.lax.cond(is_up, renoise, denoise, carry), None

  ops = (jnp.arange(len(idx)), jnp.asarray(idx), jnp.asarray(up))
  carry, _ = jax.lax.scan(body, sampler.init_carry(x_T), ops)
  return carry[0]


def repaint_problem(sampler: str, jumps: int, masked: bool,
                    capture_every: int) -> str | None:
  """Why RePaint resampling (`jumps` > 0) cannot run with these arguments,
  or None: the one statement of its rule."""
  if jumps < 0:
    return f'jumps (RePaint resamplings) must be >= 0, got {jumps}'
  if not jumps:
    return None
  if not masked:
    return 'jumps (RePaint resampling) needs a mask or outpaint margins'
  if capture_every:
    return 'jumps (RePaint resampling) and frame capture cannot be combined'
  return None


def guided_eps_fn(apply: Callable, params, y_B: jax.Array | None,
                  scale: jax.Array | None, y_null: jax.Array | None) -> EpsFn:
  """ε_θ(x, t, y); with `scale` w: ε(y_null) + w (ε(y) − ε(y_null)), both in
  one call. y_null is the null label, or a text model's empty (or negative)
  prompt."""
  if scale is None:
    return lambda x, t: apply(params, x, t, y_B)

  def eps_fn(x, t):
    B = x.shape[0]
    y2 = jnp.concatenate([y_B, y_null])
    eps = apply(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]), y2)
    eps_c, eps_u = eps[:B], eps[B:]
    return eps_u + scale.astype(eps.dtype) * (eps_c - eps_u)
  return eps_fn


def reconstruction_eps_fn(eps_fn: EpsFn, sampler: Sampler, known_x0: jax.Array,
                          known_mask: jax.Array, weight: float) -> EpsFn:
  """Reconstruction guidance (Ho et al., 2022, "Video Diffusion Models",
  eq. 7): the model's x̂0 is moved down the gradient of its squared error on
  the known pixels, x̃0 = x̂0 − (w √ᾱ / 2) ∇_x ‖(1 − mask)(x0 − x̂0)‖², and
  returned as ε. It makes the generated part agree with the known part,
  where replacing the known pixels alone only shows them to the model."""
  t_grid = jnp.asarray(sampler.timesteps, jnp.float32)
  sch = sampler.schedule   # √ᾱ and √(1−ᾱ) as tabled (precise near t = 0)
  keep = 1.0 - known_mask

  def fn(x, t):
    at = lambda a: jnp.interp(t.astype(jnp.float32), t_grid, a).reshape(
        (-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    a, s = at(sch.sqrt_alphas_cumprod), at(sch.sqrt_one_minus_alphas_cumprod)

    def error(x):
      eps = eps_fn(x, t)
      return jnp.sum(jnp.square(keep * (known_x0 - (x - s * eps) / a))), eps
    grad, eps = jax.grad(error, has_aux=True)(x)
    # x̃0 = x̂0 − d with d = (w √ᾱ / 2) ∇  ⇔  ε̃ = ε̂ + √ᾱ d / √(1−ᾱ)
    return eps + (0.5 * weight) * jnp.square(a) / s * grad
  return fn


def make_class_error_fn(apply: Callable, schedule: Schedule, num_classes: int,
                        num_levels: int = 10, draws: int = 2,
                        t_range: tuple[float, float] = (0.2, 0.8)) -> Callable:
  """jit(fn)(params, key, x0_BHWC, known_BHWC) -> err_BK: for every class k,
  the model's squared ε error on the known pixels (known = 1) of x0 noised
  to `num_levels` timesteps spread evenly over [t_range[0] T, t_range[1] T],
  `draws` noise draws each, the same noise for every class, averaged. The
  class with the lowest error is the one the model finds most likely for
  the known pixels: the diffusion classifier of Li et al. (2023), restricted
  to them. The middle of the schedule tells the classes apart best (the
  lowest and highest noise levels add little but noise to the sum;
  docs/results/editing.md). `apply(params, x_t, t_B, y_B) -> ε`."""
  T = schedule.alphas_cumprod.shape[0]
  t_L = jnp.asarray(np.round(np.linspace(*t_range, num_levels) * (T - 1)),
                    jnp.int32)

  def fn(params, key, x0, known):
    B = x0.shape[0]

    def level(err, i):
      t_B = jnp.full((B,), t_L[i // draws], jnp.int32)
      eps = jax.random.normal(jax.random.fold_in(key, i), x0.shape, x0.dtype)
      x_t = diffusion.q_sample(schedule, x0, t_B, eps)

      def one(k):
        e = apply(params, x_t, t_B, jnp.full((B,), k, jnp.int32))
        return jnp.sum(jnp.square(e - eps) * known, axis=(1, 2, 3))
      return err + jax.lax.map(one, jnp.arange(num_classes)).T, None
    err, _ = jax.lax.scan(level, jnp.zeros((B, num_classes), jnp.float32),
                          jnp.arange(num_levels * draws))
    return err / (num_levels * draws)
  return jax.jit(fn)


class Codec(NamedTuple):
  """A latent model's way between pixels and the space it denoises:
  encode(params, x_BHWC) -> z, decode(params, z) -> x_BHWC, and the factor f
  by which the latent grid is smaller."""
  encode: Callable
  decode: Callable
  factor: int


def latent_mask(mask_BHWC: jax.Array, factor: int, channels: int) -> jax.Array:
  """A pixel mask on the latent grid: a latent cell is regenerated if any
  pixel of its f×f block is."""
  B, H, W, C = mask_BHWC.shape
  m = mask_BHWC.reshape(B, H // factor, factor, W // factor, factor, C).max((2, 4, 5))
  return jnp.broadcast_to(m[..., None], m.shape + (channels,))


def make_sample_fn(apply: Callable, sampler: Sampler,
                   shape: tuple[int, ...], mesh: Mesh | None = None,
                   capture_every: int = 0, *, null_label: int = 0,
                   strength: float | None = None, jumps: int = 0,
                   codec: Codec | None = None, paste_known: bool = True,
                   condition: Callable | None = None,
                   unet_takes_mask: bool = False,
                   reconstruction: float = 0.0) -> Callable:
  """jit(fn)(params, key, y=None, scale=None, x_init=None, mask=None,
  y_null=None, noise=None) -> (x0, frames).

  y: labels, or a text model's prompt tokens [B, L]; with a guidance `scale`
  the unconditional branch gets `y_null` (labels: `null_label` if not given;
  a text model must give it: the empty or the negative prompt's tokens).

  x_T is drawn inside from the key, unless `noise` gives it (diffusers'
  `latents=`; with img2img, the noise added to the image). With `strength` (img2img) `x_init` is
  noised to t = strength·T and denoised from there; with `mask` (1 =
  regenerate) the known pixels of `x_init` are re-imposed at every step and
  returned exactly (where the mask is 0).

  With a `codec` (a latent model) `shape` is the latent's: `x_init` is
  encoded, the mask is taken to the latent grid (`latent_mask`), the scan
  runs on latents and its result (and frames) are decoded in the same jitted
  function; `paste_known` then puts the known pixels back after decoding.

  `condition(params, y)` (Stable Diffusion's text encoder) turns y and y_null
  into what `apply` takes, once per call rather than per step. With
  `unet_takes_mask` (an inpainting UNet, 9 input channels) a mask is not
  imposed on the latents: the UNet reads it, with the masked image's
  latents, as extra input channels, as diffusers' inpainting pipeline does.
  """
  batch_spec = None
  if mesh is not None and shape[0] % mesh.size == 0:
    batch_spec = NamedSharding(mesh, P('data'))
  start = None
  if strength is not None:
    start = sampler.img2img_start(strength, sampler.num_steps)

  def fn(params, key, y=None, scale=None, x_init=None, mask=None, y_null=None,
         noise=None):
    if scale is not None and y_null is None:
      if y is None or y.ndim != 1:
        raise ValueError('guidance on prompts needs y_null: the tokens of the '
                         'empty or negative prompt')
      y_null = jnp.full_like(y, null_label)
    if condition is not None:
      y = condition(params, y)
      y_null = None if y_null is None else condition(params, y_null)
    if codec is None:
      return sample(params, key, y, scale, x_init, mask, y_null, noise, apply)
    pixels, pixel_mask = x_init, mask
    unet = apply
    if unet_takes_mask:   # built once per call, not per step
      extra = _mask_channels(params, codec, x_init, mask, shape)
      doubled = jnp.concatenate([extra, extra])   # guidance's two halves
      unet = lambda p, x, t, c: apply(p, jnp.concatenate(
          [x, extra if x.shape[0] == extra.shape[0] else doubled], -1), t, c)
      if mask is not None:
        x_init = mask = None   # the UNet inpaints; nothing is imposed
    if x_init is not None:
      x_init = codec.encode(params, x_init)
    if mask is not None:
      mask = latent_mask(mask, codec.factor, shape[-1])
    z, frames = sample(params, key, y, scale, x_init, mask, y_null, noise, unet)
    x = codec.decode(params, z)
    if frames is not None:
      frames = jax.lax.map(lambda f: codec.decode(params, f), frames)
    if pixel_mask is not None and paste_known:
      x = pixel_mask * x + (1.0 - pixel_mask) * pixels
    return x, frames

  def sample(params, key, y, scale, x_init, mask, y_null, noise, unet):
    init_key, loop_key = jax.random.split(key)
    if noise is None:
      noise = jax.random.normal(init_key, shape, jnp.float32)
    if batch_spec is not None:
      noise = jax.lax.with_sharding_constraint(noise, batch_spec)
    eps_fn = guided_eps_fn(unet, params, y, scale, y_null)
    if reconstruction and mask is not None:
      eps_fn = reconstruction_eps_fn(eps_fn, sampler, x_init, mask,
                                     reconstruction)
    if start is None:
      x_T = noise * sampler.init_noise_scale
    elif start < 0:
      x_T = x_init                       # strength 0: nothing to do
    elif start == sampler.num_steps - 1 and strength >= 1.0:
      x_T = noise * sampler.init_noise_scale   # plain generation
    else:
      t_B = jnp.full(shape[:1], start)
      x_T = diffusion.q_sample(sampler.schedule, x_init, t_B, noise)
    if jumps and mask is not None:   # (an inpainting UNet takes no jumps)
      x = sample_inpaint_with_jumps(sampler, eps_fn, loop_key, x_T, x_init,
                                    mask, jumps)
      return x, None
    after_step = None
    if mask is not None:   # the known pixels, noised to the step's level
      after_step = lambda x, i, k: replace_known(
          sampler.schedule, x, x_init, mask, i,
          jax.random.normal(k, x_init.shape, x_init.dtype))
    x, frames = sampler.sample(eps_fn, loop_key, x_T, start=start,
                               capture_every=capture_every,
                               after_step=after_step)
    if mask is not None:   # the known pixels come back bit for bit
      x = mask * x + (1.0 - mask) * x_init
    return x, frames
  return jax.jit(fn, compiler_options=compiler_options())


def _mask_channels(params, codec: Codec, x_BHWC, mask_BHWC, shape) -> jax.Array:
  """An inpainting UNet's extra input: the mask on the latent grid (nearest,
  as torch's interpolate) and the latents of the image with the regenerated
  part blacked out (diffusers: image * (mask < 0.5)); without a mask (plain
  generation, img2img), all of it regenerated: a mask of ones, a black image."""
  B, h, w, _ = shape
  f = codec.factor
  if mask_BHWC is None:   # generation or img2img: all of it is regenerated
    mask_BHWC = jnp.ones((B, h * f, w * f, 1), jnp.float32)
    x_BHWC = jnp.zeros((B, h * f, w * f, 3), jnp.float32)
  m = mask_BHWC[:, ::f, ::f, :1]
  masked = x_BHWC * (mask_BHWC[..., :1] < 0.5)
  return jnp.concatenate([m, codec.encode(params, masked)], -1)


def outpaint_canvas(x: np.ndarray, margins, factor: int, why: str
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(canvas, mask) with `x` [num, H, W, C] placed inside margins (L, T, R,
  B) of a larger canvas; the mask is 1 on the new border only. Each side of
  the canvas must be a multiple of `factor`; if not, the error says `why`
  and names the nearest size that works."""
  try:
    left, top, right, bottom = (int(v) for v in margins)
  except (TypeError, ValueError):
    raise UserError(f'outpaint takes four integer margins L,T,R,B, got '
                    f'{margins!r}') from None
  if min(left, top, right, bottom) < 0:
    raise UserError(f'outpaint margins must be non-negative, got '
                    f'{left},{top},{right},{bottom}')
  if left + top + right + bottom == 0:
    raise UserError('outpaint margins are all 0: there is nothing to generate')
  n, h, w, c = x.shape
  H, W = h + top + bottom, w + left + right
  f = factor
  if H % f or W % f:
    H2, W2 = _nearest_multiple(H, h, f), _nearest_multiple(W, w, f)
    top2, bottom2 = _add_margin(top, bottom, H2 - H)
    left2, right2 = _add_margin(left, right, W2 - W)
    raise UserError(
        f'the outpainted canvas {H}x{W} {why} (its sides must be multiples '
        f'of {f}); the nearest size that works is {H2}x{W2}, e.g. outpaint '
        f'{left2},{top2},{right2},{bottom2}')
  canvas = np.zeros((n, H, W, c), np.float32)
  canvas[:, top:top + h, left:left + w] = x
  mask = np.ones((n, H, W, c), np.float32)
  mask[:, top:top + h, left:left + w] = 0.0
  return canvas, mask


def _nearest_multiple(side: int, inner: int, f: int) -> int:
  """The multiple of f nearest to `side` (ties: the larger), not below
  `inner`, and above it if `side` is (a margin asked for stays)."""
  down, up = side // f * f, -(-side // f) * f
  fits = down > inner if side > inner else down >= inner
  return down if fits and side - down < up - side else up


def _add_margin(first: int, second: int, d: int) -> tuple[int, int]:
  """Margins (first, second) changed by d in all, neither below 0."""
  second += d
  if second < 0:
    first, second = first + second, 0
  return first, second
