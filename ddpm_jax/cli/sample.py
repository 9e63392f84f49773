"""Samples from a trained checkpoint.

  python sample.py --workdir DIR [--checkpoint STEP] --num 64 --seed 0 \
      --out samples.png [--npy] [--gif] [--raw] [--batch N]
  # faster samplers:   --sampler ddim --steps 50 [--eta 0]   |  --sampler dpm++2m --steps 20
  # class guidance:    --label 7 (or --label 0,1,2) --guidance-scale 3
  #   (a class-conditional model draws every class in turn at the config's
  #   guidance scale unless told; --guidance-scale 0 is unconditional)
  # img2img (SDEdit):  --init-image in.png --strength 0.5
  # inpainting:        --init-image in.png --mask mask.png   (white = regenerate)
  # outpainting:       --init-image in.png --outpaint 4,4,4,4  (margins L,T,R,B)
  # text prompts:      --prompt "un siete" [--prompt "a three" ...] \
  #                    [--negative-prompt "a one"] [--guidance-scale 5]
  #                    (one grid row per prompt; or --prompt-file, one per line)

  # another size:      --height 48 --width 64  (multiples of the model's factor)

A latent model's workdir (configs/mnist_latent.py) takes the same flags; its
input images and masks are at its pixel size (32x32 for MNIST). So does an
imported Stable Diffusion workdir (docs/stable_diffusion.md), with --prompt,
--negative-prompt, --sampler ddim|euler|euler_a|dpm++2m|heun [--spacing
karras], --height/--width and --vae DIR. Inpainting and outpainting use the
config's editing defaults unless told: euler_a, 20 steps, and 3 jumps with
--label, or (a pixel model) reconstruction guidance of weight 20 without;
a class-conditional pixel model then infers the label from the known
pixels and completes again with it, the same way (guidance scale 1 unless
--guidance-scale says; --noinfer-label: not).
An edit writes 16 images unless --num says.

Writes the PNG grid --out; with --npy the raw samples in [-1, 1] as
<stem>.npy, with --gif an animation of the reverse process as <stem>.gif.
Uses the EMA weights unless --raw. Same as `python -m ddpm_jax.cli.sample`
and, installed, `ddpm-sample`.
"""

from absl import flags

from ddpm_jax import options
from ddpm_jax.cli import common
from ddpm_jax.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir.', required=True)
_CHECKPOINT = flags.DEFINE_integer('checkpoint', None, 'Step (default: latest).')
_NUM = flags.DEFINE_integer('num', None, 'Number of images (default 64; an '
                            'edit of --init-image: 16).')
_BATCH = flags.DEFINE_integer('batch', None, 'Images per sampling call '
                              '(default: by model size, at most 256).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed; same seed, same images.')
_OUT = flags.DEFINE_string('out', 'samples.png', 'PNG grid path (its folder '
                           'is created if missing).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --out (and its '
                                '.npy, .gif) if it exists.')
_NPY = flags.DEFINE_bool('npy', False, 'Also write the raw samples as <stem>.npy.')
_GIF = flags.DEFINE_bool('gif', False, 'Also write an animation of the reverse '
                         'process as <stem>.gif.')
_RAW = flags.DEFINE_bool('raw', False, 'Use the raw weights instead of the EMA.')
_SAMPLER = flags.DEFINE_enum('sampler', None, options.SAMPLERS,
                             "Sampler (default: the config's).")
_STEPS = flags.DEFINE_integer('steps', None, "Sampling steps (default: the config's).")
_ETA = flags.DEFINE_float('eta', None, 'DDIM eta: 0 deterministic, 1 DDPM-like.')
_CLIP = flags.DEFINE_bool('clip', None, 'Clip the predicted x0 to [-1, 1] (default: on).')
_SPACING = flags.DEFINE_enum('spacing', None, options.SPACINGS,
                             'Timestep spacing of a respaced grid; karras: '
                             "Karras et al.'s σ spacing (σ-samplers only).")
_LABEL = flags.DEFINE_list('label', None, 'Class label(s), e.g. 7 or 0,1,2; a '
                           'model trained on a folder also takes its class '
                           'names (sub-folder names), e.g. cat,dog.')
_GUIDANCE = flags.DEFINE_float('guidance-scale', None,
                               "Classifier-free guidance weight w (default: the "
                               "config's sampling.guidance_scale).")
_PROMPT = flags.DEFINE_multi_string(
    'prompt', None, 'Text prompt of a text model (repeat the flag for one grid '
    'row per prompt).')
_PROMPT_FILE = flags.DEFINE_string('prompt-file', None, 'UTF-8 text file, one '
                                   'prompt per line (instead of --prompt).')
_NEGATIVE = flags.DEFINE_string('negative-prompt', None, 'What to steer away '
                                'from: replaces the empty prompt in guidance.')
_INIT = flags.DEFINE_string('init-image', None, 'Input image for img2img or inpainting.')
_STRENGTH = flags.DEFINE_float('strength', None, 'img2img strength in [0, 1].')
_MASK = flags.DEFINE_string('mask', None, 'Inpainting mask (white = regenerate).')
_OUTPAINT = flags.DEFINE_list('outpaint', None, 'Outpainting: margins L,T,R,B '
                              'in pixels added around --init-image; only they '
                              'are generated.')
_HEIGHT = flags.DEFINE_integer('height', None, 'Image height of a generation '
                               '(default: the model\'s; a multiple of its factor).')
_WIDTH = flags.DEFINE_integer('width', None, 'Image width of a generation.')
_VAE = flags.DEFINE_string('vae', None, 'Stable Diffusion: a diffusers '
                           'AutoencoderKL folder to decode with instead of '
                           "the workdir's own VAE.")
_JUMPS = flags.DEFINE_integer('jumps', None, 'Inpainting and outpainting: '
                              'RePaint resamplings per 10-step block (any '
                              "sampler; default: the config's sampling.edit).")

_RECONSTRUCTION = flags.DEFINE_float(
    'reconstruction', None, 'Inpainting and outpainting: reconstruction '
    'guidance weight (0: off; default: the config\'s '
    'sampling.edit_reconstruction for a pixel model without --label, else 0).')

_INFER = flags.DEFINE_bool(
    'infer-label', None, 'Inpainting and outpainting without --label, on a '
    'class-conditional pixel model: complete once unconditionally, let the '
    'model classify the known pixels, complete again with that label, '
    'the same reconstruction guidance and --guidance-scale (default 1) '
    "(default: the config's sampling.edit_infer_label; --noinfer-label: "
    'the unconditional completion alone).')


def _labels() -> list[str] | None:
  """Class ids or names, as given (the pipeline resolves them)."""
  return _LABEL.value or None


def _prompts() -> list[str] | None:
  if _PROMPT_FILE.value is None:
    return _PROMPT.value
  if _PROMPT.value:
    raise UserError('use --prompt or --prompt-file, not both')
  try:
    with open(_PROMPT_FILE.value, encoding='utf-8') as f:
      lines = [l.rstrip('\r\n') for l in f]
  except FileNotFoundError:
    raise UserError(f'--prompt-file {_PROMPT_FILE.value} does not exist') from None
  except IsADirectoryError:
    raise UserError(f'--prompt-file {_PROMPT_FILE.value} is a directory') from None
  except UnicodeDecodeError as e:
    raise UserError(f'--prompt-file {_PROMPT_FILE.value} is not UTF-8 text '
                    f'(byte {e.start})') from None
  lines = [l for l in lines if l.strip()]
  if not lines:
    raise UserError(f'--prompt-file {_PROMPT_FILE.value} holds no prompt')
  return lines


def _margins() -> tuple[int, ...] | None:
  if _OUTPAINT.value is None:
    return None
  try:
    margins = tuple(int(v) for v in _OUTPAINT.value)
  except ValueError:
    margins = ()
  if len(margins) != 4:
    raise UserError(f'--outpaint takes four integers L,T,R,B, got '
                    f'{",".join(_OUTPAINT.value)}')
  return margins


def main() -> None:
  from ddpm_jax.pipeline import write_samples  # after flag parsing: fast --help
  common.report_backend()
  options = {k: v for k, v in dict(eta=_ETA.value, clip_x0=_CLIP.value,
                                   spacing=_SPACING.value).items() if v is not None}
  paths = write_samples(
      _WORKDIR.value, _OUT.value, num=_NUM.value, seed=_SEED.value,
      checkpoint=_CHECKPOINT.value, use_ema=not _RAW.value, gif=_GIF.value,
      npy=_NPY.value, labels=_labels(), prompt=_prompts(),
      negative_prompt=_NEGATIVE.value, init_image=_INIT.value, mask=_MASK.value,
      sampler=_SAMPLER.value, num_steps=_STEPS.value,
      guidance_scale=_GUIDANCE.value, strength=_STRENGTH.value,
      outpaint=_margins(), jumps=_JUMPS.value,
      reconstruction=_RECONSTRUCTION.value, infer_label=_INFER.value,
      batch_size=_BATCH.value,
      height=_HEIGHT.value, width=_WIDTH.value, vae=_VAE.value,
      overwrite=_OVERWRITE.value, **options)
  print('wrote ' + ', '.join(paths))


# The library's argument names, as this command's flags.
SPELLINGS = {'num': '--num', 'seed': '--seed',
             'overwrite=True': '--overwrite', 'init_image': '--init-image',
             'num_steps': '--steps', 'batch_size': '--batch',
             'guidance_scale': '--guidance-scale', 'jumps': '--jumps',
             'negative_prompt': '--negative-prompt', 'strength': '--strength',
             'outpaint': '--outpaint', 'eta': '--eta', 'height': '--height',
             'width': '--width', 'vae': '--vae',
             'reconstruction': '--reconstruction',
             'infer_label': '--infer-label'}


def run() -> None:
  common.run(main, spellings=SPELLINGS)


if __name__ == '__main__':
  run()
