"""Inference: restore a checkpoint's parameters and sample from them.

    from ddpm_jax import load
    pipe = load('workdirs/mnist')            # EMA weights of the latest step
    images = pipe.sample(num=16, seed=0)     # float32 [16, 28, 28, 1] in [-1, 1]

`load` restores one parameter tree (EMA or raw) and nothing else: no
optimizer is built and the optimizer state is never read. Every mode (plain,
class-guided, img2img, inpainting) is one jitted `lax.scan`; seeds, labels,
the guidance scale and the input images are runtime arguments, so changing
them does not recompile. `write_samples` is what `sample.py` runs.

`guidance_scale` means the same everywhere (`Pipeline.sample`,
`write_samples`, `evaluate`): None is the config's sampling.guidance_scale
when a condition (labels, or a text model's prompt) is given, and no
guidance without one; a number w is ε(∅) + w (ε(c) − ε(∅)), so 1 is the
plain conditional model (run as one pass) and 0 the unconditional one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from ddpm_jax import builders
from ddpm_jax import checks
from ddpm_jax import config as config_lib
from ddpm_jax import images as images_lib
from ddpm_jax import latent as latent_lib
from ddpm_jax import memory
from ddpm_jax import samplers as samplers_lib
from ddpm_jax import sampling
from ddpm_jax import sharding
from ddpm_jax import tokenizer
from ddpm_jax.checkpoint import CheckpointError, Checkpointer
from ddpm_jax.config import ModelKind
from ddpm_jax.errors import UserError, describe
from ddpm_jax import files
from ddpm_jax.files import atomic_write_all, probe_writable
from ddpm_jax.models.unet import attention_levels, downsample_factor, make_apply

# Images an edit (img2img, inpainting, outpainting) writes by default.
EDIT_NUM = 16
# Top-level activations a default sampling batch may hold (see default_batch).
_BATCH_BYTES = 2 ** 31


@dataclasses.dataclass(frozen=True)
class SampleRequest:
  """A checked sampling request: what `Pipeline.run` needs, nothing else."""
  num: int
  seed: int
  fn_args: tuple[tuple[str, Any], ...]  # everything the compiled scan depends on
  y: np.ndarray | None
  y_null: np.ndarray | None     # a text model's empty or negative prompt
  scale: float | None
  x_init: np.ndarray | None
  mask: np.ndarray | None
  batch: int
  noise: np.ndarray | None = None   # x_T (or img2img's noise) given by the caller
  # An unlabeled edit that infers its labels: this request's completions
  # give them (Pipeline.infer_labels), then `labelled` runs with them.
  labelled: 'SampleRequest | None' = None


@dataclasses.dataclass
class Pipeline:
  """A model ready to sample; jitted samplers are cached by what they
  depend on. `params` is None until `restore` (or `load`) fills it."""
  config: Any
  apply: Callable
  params: Any
  mesh: Mesh
  step: int
  codec: sampling.Codec | None = None   # a latent model's autoencoder
  step_given: bool = True   # False: `restore` may fall back to an older step
  _cache: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def kind(self) -> ModelKind:
    return config_lib.model_kind(self.config)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    d = self.config.data
    return (d.image_size, d.image_size, d.channels)

  @property
  def num_classes(self) -> int:
    """The number of classes of a class-conditional model, else 0."""
    return int(self.config.data.num_classes) if self.kind.classes else 0

  @property
  def default_batch(self) -> int:
    """Images per sampling call: about 2 GiB of float32 activations at the
    UNet's top level (x64 for the tensors alive at once), 16 to 256."""
    return self._default_batch(self.image_shape)

  def _default_batch(self, shape) -> int:
    h, w, _ = shape
    per_image = h * w * self.config.model.ch * 4 * 64
    return int(min(256, max(16, _BATCH_BYTES // per_image)))

  def sampler(self, name: str | None = None, num_steps: int | None = None,
              **options) -> samplers_lib.Sampler:
    return builders.sampler_from_config(self.config, name, num_steps, **options)

  def _labels(self, labels, num: int) -> np.ndarray | None:
    if labels is None:
      return None
    if not self.num_classes:
      raise UserError('labels need a class-conditional model '
                      '(model.class_conditional); this one is unconditional')
    items = labels if isinstance(labels, (list, tuple, np.ndarray)) else [labels]
    y = np.asarray([self._label(v) for v in np.asarray(
        items, dtype=object).reshape(-1)], np.int64)
    if y.size == 0 or num % y.size:
      raise UserError(f'{y.size} labels do not divide {num} images')
    if y.min() < 0 or y.max() >= self.num_classes:
      raise UserError(f'labels must be in [0, {self.num_classes - 1}], got '
                      f'{sorted(set(y.tolist()))}')
    return np.repeat(y, num // y.size).astype(np.int32)

  def _label(self, value) -> int:
    """A class id, or a class name of a model trained on a folder's
    sub-folders (config.data.class_names)."""
    names = list(self.config.data.get('class_names', ()))
    if isinstance(value, str):
      if value in names:        # a name first: a folder's classes may be digits
        return names.index(value)
      if value.lstrip('-').isdigit():
        return int(value)
      raise UserError(f'labels: no class named {value!r}; the classes are '
                      f'{names or list(range(self.num_classes))}')
    return checks.integer('labels', value)

  def _tokens(self, prompts: Sequence[str], what: str) -> np.ndarray:
    if any(not isinstance(p, str) for p in prompts):
      raise UserError(f'{what} must be text, got {prompts!r}')
    try:
      return tokenizer.tokenize_all(prompts, self.config.model.text_max_len)
    except UnicodeEncodeError:
      raise UserError(f'{what} is not valid UTF-8 text') from None

  def _prompts(self, prompt, negative_prompt, num: int, guided: bool
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(tokens [num, L], the unconditional branch's tokens [num, L]): prompt
    i fills images i*num/P onwards; no prompt is the empty one."""
    if prompt is None:
      if negative_prompt is not None:
        raise UserError('a negative prompt needs a prompt')
      if guided:
        raise UserError('a guidance scale needs a prompt')
      return np.repeat(self._tokens([''], 'the prompt'), num, axis=0), None
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or num % len(prompts):
      raise UserError(f'{len(prompts)} prompts do not divide {num} images')
    y = np.repeat(self._tokens(prompts, 'the prompt'), num // len(prompts), axis=0)
    if not guided:
      if negative_prompt is not None:
        raise UserError('a negative prompt needs a guidance scale other than '
                        "1: it takes the empty prompt's place in "
                        'classifier-free guidance')
      return y, None
    negative = '' if negative_prompt is None else negative_prompt
    negatives = [negative] if isinstance(negative, str) else list(negative)
    if len(negatives) not in (1, len(prompts)):
      raise UserError(f'{len(negatives)} negative prompts for {len(prompts)} '
                      'prompts: give one, or one per prompt')
    y_null = self._tokens(negatives, 'the negative prompt')
    y_null = np.repeat(np.resize(y_null, (len(prompts),) + y_null.shape[1:]),
                       num // len(prompts), axis=0)
    return y, y_null

  def _batched(self, x: np.ndarray, given: tuple, num: int, name: str,
               any_size: bool = False) -> np.ndarray:
    """An image or mask from `checks` ([H, W, C] or [N, H, W, C]) as [num,
    H, W, C] of the model's shape (with `any_size`: of its channel count); a
    one-channel mask serves every channel. Errors give the shape as passed."""
    h, w, c = self.image_shape
    if x.ndim == 3:
      x = np.broadcast_to(x[None], (num,) + x.shape)
    if x.shape[0] != num:
      raise UserError(f'{name} has shape {given}: {x.shape[0]} images for '
                      f'num={num} (give one image, or num of them)')
    if name == 'mask' and x.shape[3] == 1 and c > 1:
      x = np.broadcast_to(x, x.shape[:3] + (c,))
    if x.shape[3] != c or (not any_size and x.shape[1:3] != (h, w)):
      want = f'{h}x{w}' if not any_size else 'HxW'
      raise UserError(f'{name} has shape {given}; this model takes {want} '
                      f'images with {c} channel{"s" if c > 1 else ""}')
    return x

  def _image(self, value, num: int, any_size: bool) -> np.ndarray:
    x = checks.image('init_image', value, self.image_shape[2])
    return self._batched(x, _shape_of(value), num, 'init_image', any_size)

  def _mask(self, value, num: int) -> np.ndarray:
    x = checks.mask('mask', value)
    return self._batched(x, _shape_of(value), num, 'mask')

  def _factor(self) -> int:
    """What every side of an image must be a multiple of."""
    m = self.config.model
    f = downsample_factor(m.ch_mult, m.patch_size)
    return f * (self.codec.factor if self.codec else 1)

  def _scan_shape(self, image_shape) -> tuple[int, int, int]:
    """The shape the sampler's scan runs at: the image's, or its latent's."""
    h, w, c = image_shape
    if self.codec is None:
      return (h, w, c)
    z = config_lib.unet_input_shape(self.config)[2]
    return (h // self.codec.factor, w // self.codec.factor, z)

  def _network_levels(self) -> tuple[list, list]:
    """(the UNet's levels on the scan canvas, the decoder's on the pixel
    canvas) for memory.network_bytes."""
    m = self.config.model
    p = m.get('patch_size', 1)
    size = config_lib.unet_input_shape(self.config)[0]
    attn = set(attention_levels(size, m.ch_mult, m.attn_resolutions, p))
    text = self.kind.text
    cross = set(attention_levels(size, m.ch_mult, m.cross_attn_resolutions, p)
                if text else ())
    unet = []
    for level, mult in enumerate(m.ch_mult):
      c = m.ch * mult
      heads = (c // m.attn_head_dim if m.get('attn_head_dim', 0) else 1
               ) if level in attn else 0
      unet.append(memory.Level(
          2 ** level * p, c, m.num_res_blocks + 1,
          heads + (m.text_heads if level in cross else 0),
          m.text_max_len if level in cross else 0))
    decoder = []
    if self.codec is not None:
      a = self.config.autoencoder
      for level, mult in enumerate(a.ch_mult):
        last = level == len(a.ch_mult) - 1
        decoder.append(memory.Level(2 ** level, a.ch * mult, 0, int(last)))
    return unet, decoder

  def _image_bytes(self, shape, guided: bool, backward: bool = False) -> int:
    """Estimated peak bytes one image of a sampling call adds, at the scan
    `shape`; `backward`: the UNet is differentiated (reconstruction
    guidance), which keeps its forward activations, about 3× the peak."""
    unet, decoder = self._network_levels()
    h, w, _ = shape
    f = self.codec.factor if self.codec else 1
    calls = (2 if guided else 1) * (3 if backward else 1)
    return max(calls * memory.network_bytes(unet, h, w),
               memory.network_bytes(decoder, h * f, w * f))

  def _call_bytes(self, shape, guided: bool, frames: int = 0,
                  backward: bool = False) -> tuple[int, int]:
    """(bytes of the parameters, estimated peak bytes per image) of a
    sampling call at the scan `shape`, the sampler's carry and frames
    included."""
    fixed = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(self.params)
                ) if self.params is not None else 0
    return fixed, self._image_bytes(shape, guided, backward) + 4 * int(
        np.prod(shape)) * (frames + 4)

  def _fitting_batch(self, shape, batch: int, given: bool, guided: bool,
                     frames: int, backward: bool = False) -> int:
    """`batch`, or (not `given`) the largest batch up to it whose estimated
    peak memory fits the device; one line if none fits (or a given batch
    does not), naming the largest batch or canvas that does."""
    avail = memory.device_bytes()
    if avail is None:
      return batch
    devices = self.mesh.size
    fixed, per_image = self._call_bytes(shape, guided, frames, backward)
    per_device = lambda b: -(-b // devices) if b % devices == 0 else b
    fits = lambda b: fixed + per_device(b) * per_image <= avail
    if fits(batch):
      return batch
    largest = max((avail - fixed) // per_image, 0) * (
        devices if batch % devices == 0 else 1)
    f = self.codec.factor if self.codec else 1
    h, w = shape[0] * f, shape[1] * f
    where = f'{len(jax.local_devices())} x {jax.local_devices()[0].platform}'
    if largest >= 1:
      if not given:
        return int(min(batch, largest))
      raise UserError(
          f'a batch of {batch} images of {h}x{w} needs about '
          f'{memory.gib(fixed + per_device(batch) * per_image)} to sample, more '
          f'than the {memory.gib(avail)} of this device ({where}); the largest '
          f'batch that fits is about batch_size={int(largest)}')
    side, step = 0, self._factor()
    s = step
    while fixed + self._image_bytes(self._scan_shape((s, s, shape[2])),
                                    guided, backward) <= avail:
      side, s = s, s + step
    fit = (f'the largest square canvas that fits is about {side}x{side}'
           if side else 'no canvas fits')
    raise UserError(
        f'one {h}x{w} image needs about '
        f'{memory.gib(fixed + per_image)} to sample, more than the '
        f'{memory.gib(avail)} of this device ({where}); {fit}')

  def _outpaint(self, x: np.ndarray, margins) -> tuple[np.ndarray, np.ndarray]:
    """(canvas, mask) of `sampling.outpaint_canvas` at this model's factor."""
    f = self._factor()
    why = (f'cannot be halved {len(self.config.model.ch_mult) - 1} times by '
           'this UNet' if self.codec is None else
           f'does not fit this latent model (f={self.codec.factor} times the '
           f"UNet's {f // self.codec.factor})")
    return sampling.outpaint_canvas(x, margins, f, why)

  def request(self, num: int = 16, seed: int = 0, *,
              infer_label: bool | None = None, **kwargs) -> SampleRequest:
    """Checks a sampling request (`sample`'s arguments) against the model
    without touching its parameters. An edit of a class-conditional pixel
    model without labels infers them (`infer_label`, default the config's
    sampling.edit_infer_label): a first, unconditional pass completes the
    images, the model classifies their known pixels (`infer_labels`) and a
    second pass completes them again with those labels, both checked here.
    The second pass is the first with the label: the conditional model
    (`guidance_scale`, default 1) and the same reconstruction guidance,
    which keeps a wrongly inferred label from overruling the known pixels
    (docs/results/editing.md)."""
    if not self._infers_label(infer_label, kwargs):
      return self._checked(num, seed, **kwargs)
    # the first pass only gives the labels: no guidance scale, no frames
    first = self._checked(num, seed, **{
        **kwargs, 'guidance_scale': None, 'capture_every': 0})
    scale = kwargs.get('guidance_scale')
    second = {**kwargs, 'labels': 0, 'guidance_scale': 1.0 if scale is None
              else scale, 'reconstruction': dict(first.fn_args)['reconstruction']}
    return dataclasses.replace(first, labelled=self._checked(num, seed, **second))

  def _infers_label(self, infer_label, kwargs: dict) -> bool:
    edit = kwargs.get('mask') is not None or kwargs.get('outpaint') is not None
    given = kwargs.get('labels') is not None or kwargs.get('prompt') is not None
    able = self.kind.classes and self.codec is None
    if infer_label is None:
      return bool(edit and not given and able
                  and self.config.sampling.edit_infer_label)
    if not checks.boolean('infer_label', infer_label):
      return False
    if not able:
      raise UserError('infer_label needs a class-conditional pixel model; '
                      'this one is ' + ('a latent model' if self.kind.classes
                                        else 'not class-conditional'))
    if not edit:
      raise UserError('infer_label needs a mask or outpaint margins')
    if given:
      raise UserError('infer_label infers the labels: give labels or '
                      'infer_label, not both')
    return True

  def _checked(self, num: int = 16, seed: int = 0, *, sampler: str | None = None,
              num_steps: int | None = None,
              labels: Sequence[int] | int | None = None,
              prompt: str | Sequence[str] | None = None,
              negative_prompt: str | Sequence[str] | None = None,
              guidance_scale: float | None = None, init_image=None,
              strength: float | None = None, mask=None, outpaint=None,
              paste_known: bool = True, jumps: int | None = None,
              capture_every: int = 0, reconstruction: float | None = None,
              batch_size: int | None = None, noise=None,
              height: int | None = None, width: int | None = None,
              **sampler_options) -> SampleRequest:
    """`request` for one pass; every check of `sample`'s arguments lives
    here."""
    num = checks.integer('num', num, low=1)
    seed = checks.integer('seed', seed)
    num_steps = checks.integer('num_steps', num_steps, low=1, optional=True)
    guidance_scale = checks.number('guidance_scale', guidance_scale,
                                   optional=True)
    strength = checks.number('strength', strength, low=0, high=1, optional=True)
    paste_known = checks.boolean('paste_known', paste_known)
    jumps = checks.integer('jumps', jumps, low=0, optional=True)
    reconstruction = checks.number('reconstruction', reconstruction, low=0,
                                   optional=True)
    capture_every = checks.integer('capture_every', capture_every, low=0)
    batch_size = checks.integer('batch_size', batch_size, low=1, optional=True)
    kind = self.kind
    if labels is not None and prompt is not None:
      raise UserError('use labels or a prompt, not both')
    if (prompt is not None or negative_prompt is not None) and not kind.text:
      raise UserError('prompts need a text-conditioned model '
                      '(model.text_conditional); this one is ' +
                      ('class-conditional: give labels' if kind.classes
                       else 'unconditional'))
    if labels is not None and kind.text:
      raise UserError('this model takes prompts, not labels')
    conditioned = labels is not None or prompt is not None
    if guidance_scale is not None:
      if not kind.conditional:
        raise UserError('a guidance scale needs a class- or text-conditioned '
                        'model; this one is unconditional')
      if not conditioned:
        raise UserError('a guidance scale needs ' +
                        ('a prompt' if kind.text else 'labels'))
    elif conditioned:
      guidance_scale = float(self.config.sampling.guidance_scale)
    # w = 1 is the conditional model itself: one pass instead of two.
    guided = guidance_scale is not None and guidance_scale != 1.0
    y_null = None
    if kind.text:
      y, y_null = self._prompts(prompt, negative_prompt, num, guided)
    else:
      y = self._labels(labels, num)
      if y is None and kind.classes:
        y = np.full((num,), self.num_classes, np.int32)   # the null label
    if (strength is not None or mask is not None or outpaint is not None
        ) and init_image is None:
      raise UserError('strength, mask and outpaint need an init image')
    if sum(v is not None for v in (strength, mask, outpaint)) > 1:
      raise UserError('use one of strength (img2img), mask (inpainting) and '
                      'outpaint')
    if init_image is not None and strength is None and mask is None and (
        outpaint is None):
      raise UserError('an init image needs a strength (img2img), a mask '
                      '(inpainting) or outpaint margins')
    if mask is not None or outpaint is not None:   # the editing defaults
      s = self.config.sampling
      sampler = sampler if sampler is not None else (s.edit_sampler or None)
      if num_steps is None and s.edit_num_steps:
        num_steps = min(s.edit_num_steps, self.config.diffusion.num_timesteps)
      # (not for latent models: their known latents are encoded from the
      # whole image, and guidance toward them brings back what the mask
      # hides; docs/results/editing.md)
      if (reconstruction is None and not conditioned and not kind.text
          and self.codec is None):
        reconstruction = float(s.edit_reconstruction)
      if jumps is None:
        jumps = 0 if reconstruction else s.edit_jumps
    elif reconstruction:
      raise UserError('reconstruction guidance needs a mask or outpaint '
                      'margins')
    if reconstruction and self._scan_options().get('unet_takes_mask'):
      raise UserError('reconstruction guidance does not apply to an '
                      'inpainting UNet (it reads the mask itself)')
    jumps = jumps or 0
    reconstruction = reconstruction or 0.0
    smp = self.sampler(sampler, num_steps, **sampler_options)  # checks them all
    name = smp.name
    problem = sampling.repaint_problem(
        name, jumps, mask is not None or outpaint is not None, capture_every)
    if problem:
      raise UserError(problem)
    x_init = None if init_image is None else self._image(
        init_image, num, any_size=outpaint is not None)
    m = None if mask is None else self._mask(mask, num)
    if outpaint is not None:
      x_init, m = self._outpaint(x_init, outpaint)
    height = checks.integer('height', height, low=1, optional=True)
    width = checks.integer('width', width, low=1, optional=True)
    if (height or width) and x_init is not None:
      raise UserError('height and width are for generation; an init image '
                      'sets the size of an edit')
    h, w, c = self.image_shape
    f = self._factor()
    for side, v in (('height', height), ('width', width)):
      if v is not None and v % f:
        raise UserError(f'{side} must be a multiple of {f} for this model, '
                        f'got {v}')
    shape = self._scan_shape((height or h, width or w, c) if x_init is None
                             else x_init.shape[1:])
    batch = self._fitting_batch(
        shape, min(num, batch_size or self._default_batch(shape)),
        batch_size is not None, guided, -(-smp.num_steps // capture_every) + 1
        if capture_every else 0, reconstruction > 0)
    if noise is not None:   # diffusers' latents=: the same start, the same images
      noise = np.asarray(noise, np.float32)
      if noise.shape != (num,) + tuple(shape):
        raise UserError(f'noise has shape {noise.shape}; this request starts '
                        f'from {(num,) + tuple(shape)} (num x the scan shape)')
      if not np.all(np.isfinite(noise)):
        raise UserError('noise holds NaN or infinite values')
    fn_args = (('sampler', name), ('num_steps', smp.num_steps), ('shape', shape),
               ('paste_known', bool(paste_known)),
               ('options', tuple(sorted(sampler_options.items()))),
               ('capture_every', capture_every), ('strength', strength),
               ('jumps', jumps), ('reconstruction', float(reconstruction)))
    return SampleRequest(num, seed, fn_args, y, y_null,
                         float(guidance_scale) if guided else None,
                         x_init, m, batch, noise)

  def _scan_options(self) -> dict[str, Any]:
    """What this kind of model adds to `sampling.make_sample_fn`."""
    return {'null_label': self.num_classes}

  def _sample_fn(self, fn_args: tuple, batch: int) -> Callable:
    key = fn_args + (('batch', batch),)
    if key not in self._cache:
      a = dict(fn_args)
      smp = self.sampler(a['sampler'], a['num_steps'], **dict(a['options']))
      self._cache[key] = sampling.make_sample_fn(
          self.apply, smp, (batch,) + tuple(a['shape']), self.mesh,
          a['capture_every'], strength=a['strength'], jumps=a['jumps'],
          codec=self.codec, paste_known=a['paste_known'],
          reconstruction=a['reconstruction'], **self._scan_options())
    return self._cache[key]

  def run(self, req: SampleRequest, *, progress: bool = False
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """(images [num, H, W, C], frames or None) of a checked request, in
    batches of `req.batch`. Batch k > 0 uses the key fold_in(key(seed), k), so
    the first batch equals a run of `batch` images with the same seed. A
    request that infers its labels runs twice (`request`)."""
    if self.params is None:
      raise RuntimeError('Pipeline.run before restore(): no parameters')
    if req.labelled is not None:
      first, _ = self._run(req, progress)
      labels = self.infer_labels(first, 1.0 - req.mask, req.seed, req.batch)
      req = dataclasses.replace(req.labelled, y=labels.astype(np.int32))
    return self._run(req, progress)

  def infer_labels(self, x_BHWC, known_BHWC, seed: int = 0,
                   batch_size: int | None = None) -> np.ndarray:
    """The class each image's known pixels (known = 1) are most likely to
    show, by the model itself: the lowest ε error on them over 10 noise
    levels in [0.2 T, 0.8 T] x 2 draws (`sampling.make_class_error_fn`).
    Given completed images, the completion is the context of the known
    part; this is how an unlabeled edit picks its labels
    (docs/results/editing.md)."""
    if self.params is None:
      raise RuntimeError('infer_labels before restore(): no parameters')
    if not self.kind.classes:
      raise UserError('infer_labels needs a class-conditional model')
    x = self._scan_images(x_BHWC)
    if not np.all(np.isfinite(x)):
      raise UserError('x_BHWC holds NaN or infinite values')
    known = np.asarray(known_BHWC, np.float32)
    if known.ndim not in (3, 4) or known.shape[-1] not in (1, x.shape[3]) or (
        known.shape[-3:-1] != x.shape[1:3]) or (
            known.ndim == 4 and known.shape[0] not in (1, len(x))):
      raise UserError(f'known_BHWC has shape {known.shape}; x_BHWC is '
                      f'{x.shape} (a mask: [H, W, 1] or [B, H, W, 1])')
    known = np.broadcast_to(known, x.shape[:3] + known.shape[-1:])
    batch = checks.integer('batch_size', batch_size, low=1, optional=True) or len(x)
    if 'class_errors' not in self._cache:
      self._cache['class_errors'] = sampling.make_class_error_fn(
          self.apply, builders.schedule_from_config(self.config),
          self.num_classes)
    fn = self._cache['class_errors']
    key = jax.random.fold_in(sampling.seed_key(seed), 0x6c61)   # not the sampler's
    errs = []
    for k, i in enumerate(range(0, len(x), batch)):
      n = min(batch, len(x) - i)
      errs.append(np.asarray(fn(self.params, jax.random.fold_in(key, k),
                                _pad_to(x[i:i + n], batch),
                                _pad_to(known[i:i + n], batch)))[:n])
    return np.concatenate(errs).argmin(1)

  def _scan_images(self, x_BHWC) -> np.ndarray:
    """x_BHWC as float32, checked against what the model's scan takes (a
    latent model's latents)."""
    x = np.asarray(x_BHWC, np.float32)
    c = self._scan_shape(self.image_shape)[2]
    if x.ndim != 4 or x.shape[3] != c:
      raise UserError(f'x_BHWC has shape {x.shape}; this model takes '
                      f'[B, H, W, {c}]')
    return x

  def _run(self, req: SampleRequest, progress: bool
           ) -> tuple[np.ndarray, np.ndarray | None]:
    scale = None if req.scale is None else jnp.float32(req.scale)
    root = sampling.seed_key(req.seed)
    xs, frames = [], []
    starts = range(0, req.num, req.batch)
    for k, i in enumerate(tqdm(starts, desc='sample', disable=not progress
                               or len(starts) == 1, dynamic_ncols=True)):
      n = min(req.batch, req.num - i)
      pad = lambda a: None if a is None else _pad_to(a[i:i + n], req.batch)
      fn = self._sample_fn(req.fn_args, req.batch)
      try:
        x, f = fn(self.params, root if k == 0 else jax.random.fold_in(root, k),
                  pad(req.y), scale, pad(req.x_init), pad(req.mask),
                  pad(req.y_null), pad(req.noise))
      except jax.errors.JaxRuntimeError as e:
        if 'RESOURCE_EXHAUSTED' not in str(e):
          raise
        raise UserError(
            f'out of device memory sampling a batch of {req.batch} at '
            f'{"x".join(map(str, dict(req.fn_args)["shape"][:2]))} (the '
            'estimate let it through): try a smaller batch_size or canvas'
        ) from None
      xs.append(np.asarray(sharding.gather(x))[:n])
      if f is not None:
        frames.append(np.asarray(jax.device_get(f))[:, :n])
    return (np.concatenate(xs),
            np.concatenate(frames, axis=1) if frames else None)

  def predict_noise(self, x_BHWC, t_B, labels=None) -> np.ndarray:
    """The model's ε at noisy images x_t ([B, H, W, C], a latent model's
    latents) and integer timesteps t ([B] or one), converted from v or x0
    where the model predicts those: the function every sampler calls. A
    class-conditional model without labels gets the null label. Jitted once
    per shape."""
    if self.params is None:
      raise RuntimeError('predict_noise before restore(): no parameters')
    if self.kind.text:
      raise UserError('predict_noise takes labels; a text model is sampled '
                      'with prompt= in sample()')
    x = self._scan_images(x_BHWC)
    t = np.broadcast_to(np.asarray(t_B), (x.shape[0],)).astype(np.int32)
    T = self.config.diffusion.num_timesteps
    if t.min() < 0 or t.max() >= T:
      raise UserError(f't_B must be in [0, {T - 1}], got {sorted(set(t.tolist()))[:5]}')
    y = self._labels(labels, len(x))
    if y is None and self.kind.classes:
      y = np.full((len(x),), self.num_classes, np.int32)
    if 'predict_noise' not in self._cache:
      self._cache['predict_noise'] = jax.jit(self.apply)
    return np.asarray(self._cache['predict_noise'](self.params, x, t, y))

  def sample(self, num: int = 16, seed: int = 0, *, return_frames: bool = False,
             progress: bool = False, **kwargs):
    """Samples `num` images in [-1, 1] (float32 NumPy, NHWC).

    sampler=, num_steps=, and the sampler's options (eta=, clip_x0=,
    spacing=, var_type=); labels: class per image (repeated to fill `num`);
    a text model takes prompt= (a string, or a list: prompt i fills the
    i-th block of num/len images) and negative_prompt= (one, or one per
    prompt; it replaces the empty prompt in guidance); guidance_scale: the
    classifier-free guidance weight w (None: the config's when labels or a
    prompt are given; 0: unconditional, 1: conditional).
    init_image ([H, W, C] or [num, H, W, C] in [-1, 1])
    with `strength` is img2img (SDEdit); with `mask` (1 = regenerate) it is
    inpainting, with `jumps` RePaint resamplings of every 10-step block (any
    sampler); with `outpaint=(L, T, R, B)` it is outpainting: the image (of any
    size) is placed on a canvas larger by those margins and only the border
    is generated, so the images come out at the canvas size. Inpainting and
    outpainting take the sampler, step count and jumps they are not given
    from the config's sampling.edit_* (docs/results/editing.md). With no
    labels (or prompt) an edit is unconditional: the null condition, with
    reconstruction guidance (`reconstruction=` weight, default the config's
    sampling.edit_reconstruction for a pixel model; jumps then default to
    0); a class-conditional pixel model then infers the labels from the
    known pixels and completes again with them, the same way, at
    `guidance_scale` (default 1) (`infer_label=`, default
    sampling.edit_infer_label; see `request`). A latent model
    takes the same arguments: the scan runs on latents and is decoded; with
    a mask (or outpaint), `paste_known=False` keeps the decoder's pixels
    where the image was known instead of putting the originals back.
    batch_size= images per call (default: `default_batch`).
    noise= starts the reverse process from this x_T ([num, H, W, C], a
    latent model's latent shape) instead of drawing it from the seed:
    diffusers' `latents=`.
    """
    return_frames = checks.boolean('return_frames', return_frames)
    progress = checks.boolean('progress', progress)
    x, frames = self.run(self.request(num, seed, **kwargs), progress=progress)
    return (x, frames) if return_frames else x

  def restore(self, workdir: str, use_ema: bool = True) -> None:
    """Restores this pipeline's step from `workdir`: one parameter tree only
    (a latent model: and the autoencoder copied into its checkpoint). When
    the step was not given and it is damaged, the newest older step of the
    same model is restored instead, with a warning."""
    with Checkpointer(workdir, read_only=True) as ckpt:
      if self.step_given:
        self.params = self._restore_step(ckpt, self.step, use_ema)
        return

      def read(step: int) -> Any:
        if step != self.step:   # an older step stands in only for this model
          _, meta = ckpt.read_meta(step)
          if (config_lib.model_signature(config_lib.config_from_dict(meta['config']))
              != config_lib.model_signature(self.config)):
            raise CheckpointError(f'no readable checkpoint of this model in '
                                  f'{ckpt.directory} at or before step {self.step}')
        return self._restore_step(ckpt, step, use_ema)
      self.step, self.params = ckpt.newest_readable(read, at_most=self.step)

  def _restore_step(self, ckpt: Checkpointer, step: int, use_ema: bool) -> Any:
    _, abstract = builders.abstract_model(self.config)
    which = 'ema_params' if use_ema else 'params'
    params = ckpt.restore_params(step, which, abstract, self.mesh)
    if self.codec is not None:
      _, ae_abstract = latent_lib.abstract_autoencoder(
          self.config.autoencoder, self.config.data.channels)
      params = latent_lib.joint_params(params, ckpt.restore_params(
          step, 'autoencoder', ae_abstract, self.mesh))
    return params


def _shape_of(value) -> tuple:
  """The shape of an image argument as the caller passed it."""
  size = getattr(value, 'size', None)
  if hasattr(value, 'mode') and isinstance(size, tuple):  # a PIL image
    return (size[1], size[0])
  return tuple(np.shape(value))


def _pad_to(a: np.ndarray, n: int) -> np.ndarray:
  """The last batch padded (with its first entry) to the compiled size."""
  if len(a) == n:
    return a
  return np.concatenate([a, np.repeat(a[:1], n - len(a), axis=0)])


def read_config(workdir: str, step: int | None = None):
  """(step, the config) of a checkpoint (default: the newest readable one;
  a damaged newer one is skipped with a warning)."""
  with Checkpointer(workdir, read_only=True) as ckpt:
    if step is None:
      ckpt.resolve(None)   # "no checkpoint found" when there is none
      step, (_, meta) = ckpt.newest_readable(ckpt.read_meta)
    else:
      step, meta = ckpt.read_meta(step)
  return step, config_lib.config_from_dict(meta['config'])


def open_pipeline(workdir: str, step: int | None = None,
                  mesh: Mesh | None = None, vae: str | None = None) -> Pipeline:
  """A Pipeline with the checkpoint's config and no parameters yet: every
  request can be checked before the (slow) restore."""
  workdir = checks.path('workdir', workdir)
  step = checks.integer('step', step, low=0, optional=True)
  if mesh is not None and not isinstance(mesh, Mesh):
    raise UserError(f'mesh must be a jax.sharding.Mesh or None, got '
                    f'{type(mesh).__name__}')
  if not files.isdir(workdir):
    raise UserError(f'workdir {workdir} does not exist' if not files.exists(
        workdir) else f'workdir {workdir} is not a directory')
  given = step is not None
  step, config = read_config(workdir, step)
  if config.get('stable_diffusion'):
    from ddpm_jax import stable_diffusion   # it builds on this module
    return stable_diffusion.open_sd_pipeline(
        workdir, config, step, mesh or sharding.make_mesh(), given, vae)
  if vae is not None:
    raise UserError('vae= swaps the VAE of a Stable Diffusion workdir; '
                    f'{workdir} holds another kind of model')
  kind = config_lib.model_kind(config)
  if kind.autoencoder:
    raise UserError(f'{workdir} holds an autoencoder, which does not sample: '
                    'train a latent model on it (configs/mnist_latent.py)')
  graphdef, _ = builders.abstract_model(config)
  apply = builders.eps_apply_from_config(config, make_apply(graphdef))
  codec = None
  if kind.latent:
    codec = latent_lib.make_codec(config)
    apply = latent_lib.unet_apply(apply)
  return Pipeline(config, apply, None, mesh or sharding.make_mesh(),
                  step, codec, step_given=given)


def load(workdir: str, step: int | None = None, use_ema: bool = True,
         mesh: Mesh | None = None, vae: str | None = None) -> Pipeline:
  """Restores the checkpoint at `step` (default: latest) of a workdir: its
  config and its EMA (or, with use_ema=False, raw) parameters only. A
  Stable Diffusion workdir takes `vae=`: a diffusers AutoencoderKL folder
  (or a pipeline folder's vae/) used instead of its own."""
  use_ema = checks.boolean('use_ema', use_ema)
  vae = checks.path('vae', vae) if vae is not None else None
  pipe = open_pipeline(workdir, step, mesh, vae)
  pipe.restore(workdir, use_ema)
  return pipe


def write_samples(workdir: str, out: str, *, num: int | None = None,
                  seed: int = 0,
                  checkpoint: int | None = None, use_ema: bool = True,
                  gif: bool = False, npy: bool = False,
                  labels: Sequence[int] | None = None,
                  init_image: str | None = None, mask: str | None = None,
                  progress: bool = True, overwrite: bool = False,
                  vae: str | None = None, **sample_kwargs) -> list[str]:
  """Samples `num` images (default 64; an edit of `init_image`: EDIT_NUM)
  into the PNG grid `out` (a class-conditional model: `labels` default to
  every class in turn, as in the training grid, but an edit without labels
  starts unconditional and infers them, as `Pipeline.sample`; a
  text model: `prompt=` one or a list, one grid row each; no prompt:
  unconditional; `guidance_scale` as in `Pipeline.sample`); with `npy`, the
  raw samples in [-1, 1] into <stem>.npy; with `gif`, the reverse process
  into <stem>.gif; `init_image` and `mask` are image files. Every check runs
  before sampling; the output's folder is created if missing; every file is
  written to a temporary name first and renamed over its target only when
  all succeeded, so a failed run replaces nothing; an existing file is
  replaced only with `overwrite=True`. Returns the written paths."""
  out = checks.path('out', out)
  if num is None:   # a grid to look at; edits of one image: a few variations
    num = EDIT_NUM if init_image else 64
  num = checks.integer('num', num, low=1)
  seed = checks.integer('seed', seed)
  checkpoint = checks.integer('checkpoint', checkpoint, low=0, optional=True)
  if not out.lower().endswith('.png'):
    raise UserError(f'the output file must end in .png, got {out}')
  stem = os.path.splitext(out)[0]
  paths = [out] + ([stem + '.npy'] if npy else []) + ([stem + '.gif'] if gif else [])
  for p in paths:
    _check_writable(p)
    if files.exists(p) and not overwrite:
      raise UserError(f'{p} exists; pass overwrite=True to replace it')
  pipe = open_pipeline(workdir, checkpoint, vae=vae)
  if labels is not None and not isinstance(labels, (list, tuple, np.ndarray)):
    labels = [labels]
  nrow = None
  if labels is not None and len(labels) > 1 and num % len(labels) == 0:
    nrow = num // len(labels)  # one row per requested label
  prompt = sample_kwargs.get('prompt')
  if pipe.kind.text and prompt is not None:
    if not isinstance(prompt, str) and len(prompt) > 1 and num % len(prompt) == 0:
      nrow = num // len(prompt)  # one row per prompt
  if pipe.kind.classes and labels is None and not init_image:  # every class
    k = pipe.num_classes
    if num % k == 0:
      labels, nrow = [i * k // num for i in range(num)], num // k  # row r: class r
    else:
      labels = [i % k for i in range(num)]
  c = pipe.config.data.channels
  x_init = (images_lib.read_image(init_image, c, 'the init image')
            if init_image else None)
  m = None
  if mask:   # white (above mid-grey) regenerates
    m = (images_lib.read_image(mask, 1, 'the mask') > 0.0).astype(np.float32)
  capture = 0
  if gif:  # about 50 frames
    steps = pipe.sampler(sample_kwargs.get('sampler'),
                         sample_kwargs.get('num_steps')).num_steps
    capture = max(1, steps // 50)
  req = pipe.request(num, seed, labels=labels, init_image=x_init, mask=m,
                     capture_every=capture, **sample_kwargs)
  pipe.restore(workdir, use_ema)
  x, frames = pipe.run(req, progress=progress)
  writers = [lambda f: images_lib.write_grid(x, f, nrow=nrow)]
  if npy:
    writers.append(lambda f: np.save(f, x))
  if gif:
    writers.append(lambda f: images_lib.write_gif(frames, f, nrow=nrow))
  files.makedirs(os.path.dirname(files.absolute(out)))
  atomic_write_all(paths, writers)
  return paths


def _check_writable(path: str) -> None:
  """An output file's folder, or the nearest existing folder above it (the
  rest is created at write time), must be a writable directory."""
  files.require_utf8(path, 'output file')
  if files.isdir(path):
    raise UserError(f'{path} is a directory, not an output file')
  d = os.path.dirname(files.absolute(path))
  if files.is_remote(d):   # a bucket has no folders to create: prove it takes writes
    try:
      files.makedirs(d)
      probe_writable(d)
    except OSError as e:
      raise UserError(f'cannot write to {d}: {describe(e)}') from e
    return
  while not os.path.exists(d):
    d = os.path.dirname(d)
  if not os.path.isdir(d):
    raise UserError(f'cannot create the output folder for {path}: {d} is not '
                    'a directory')
  try:
    probe_writable(d)
  except OSError as e:
    raise UserError(f'output directory {d} is not writable: {e.strerror or e}') from e
