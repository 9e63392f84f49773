"""python -m experiments.figures --workdir workdirs/mnist --latent workdirs/mnist_latent --autoencoder workdirs/mnist_autoencoder --out docs

The README's outpainting and latent-diffusion figures, as PNGs in --out:
--workdir (a class-conditional pixel model) makes the first, --latent (with
its --autoencoder) the others.

- <out>/outpaint.png: the original (examples/digit.png), the 36×36 canvas with
  the border to generate in grey, and three seeds (label 7, the config's
  guidance);
- <out>/latent_samples.png: 40 samples of the latent model, one row per digit;
- <out>/latent_reconstructions.png: held-out digits above their autoencoder
  reconstructions;
- <out>/latent_img2img.png: examples/digit32.png, then img2img at strengths
  0.3, 0.5, 0.7, 0.9;
- <out>/latent_inpaint.png: the image, the mask (right half), then two seeds
  with the known pixels pasted back after decoding, then the same two seeds
  without pasting.
"""

import os

from absl import flags
import jax
import numpy as np

from benchmarks import common
from ddpm_jax import images as images_lib
from ddpm_jax import latent as latent_lib
from ddpm_jax import sharding
from ddpm_jax.metrics import mnist_lenet
from ddpm_jax.pipeline import load

_WORKDIR = flags.DEFINE_string('workdir', None, 'Pixel model workdir (outpainting).')
_LATENT = flags.DEFINE_string('latent', None, 'Latent model workdir (the latent figures).')
_AUTOENCODER = flags.DEFINE_string('autoencoder', None, "The latent model's "
                                   'autoencoder workdir (with --latent).')
_OUT = flags.DEFINE_string('out', 'docs', 'Output folder.')
flags.register_multi_flags_validator(
    ['latent', 'autoencoder'], lambda f: not f['latent'] or bool(f['autoencoder']),
    '--latent needs --autoencoder')


def outpaint(workdir: str, out: str) -> None:
  pipe = load(workdir)
  x = images_lib.read_image('examples/digit.png', 1, 'digit')
  m = (4, 4, 4, 4)
  outs = pipe.sample(num=3, seed=0, init_image=x, outpaint=m, labels=[7],
                     guidance_scale=pipe.config.sampling.guidance_scale)
  orig = np.full((36, 36, 1), -1.0, np.float32)
  orig[4:32, 4:32] = x
  canvas = np.zeros((36, 36, 1), np.float32)   # grey: to generate
  canvas[4:32, 4:32] = x
  images_lib.save_grid(np.concatenate([orig[None], canvas[None], outs]),
                       os.path.join(out, 'outpaint.png'), nrow=5)


def latent_figures(latent: str, autoencoder: str, out: str) -> None:
  pipe = load(latent)
  k = pipe.num_classes
  x = pipe.sample(num=40, seed=0, labels=list(range(k)),
                  guidance_scale=pipe.config.sampling.guidance_scale)
  images_lib.save_grid(x, os.path.join(out, 'latent_samples.png'), nrow=4)

  cfg, params, _, _ = latent_lib.restore_autoencoder(autoencoder, -1,
                                                     sharding.make_mesh())
  fns = latent_lib.autoencoder_fns(cfg.autoencoder, 1)
  _, held, _ = mnist_lenet.mnist_classifier(os.path.join(autoencoder, 'eval'))
  held = held[np.linspace(0, len(held) - 1, 10).astype(int)]
  held = np.pad(held, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  rec = np.asarray(jax.jit(fns.reconstruct)(params, held))
  images_lib.save_grid(np.concatenate([held, rec]),
                       os.path.join(out, 'latent_reconstructions.png'), nrow=10)

  digit = images_lib.read_image('examples/digit32.png', 1, 'digit')
  mask = (images_lib.read_image('examples/mask32.png', 1, 'mask') > 0).astype(np.float32)
  w = pipe.config.sampling.guidance_scale
  row = [digit[None]] + [pipe.sample(num=1, seed=0, init_image=digit, strength=s,
                                     labels=[7], guidance_scale=w)
                         for s in (0.3, 0.5, 0.7, 0.9)]
  images_lib.save_grid(np.concatenate(row), os.path.join(out, 'latent_img2img.png'),
                       nrow=5)
  kw = dict(num=2, seed=0, init_image=digit, mask=mask, labels=[7], guidance_scale=w)
  pasted = pipe.sample(**kw)
  raw = pipe.sample(**kw, paste_known=False)
  images_lib.save_grid(np.concatenate([digit[None], mask[None] * 2 - 1, pasted, raw]),
                       os.path.join(out, 'latent_inpaint.png'), nrow=6)


def main() -> None:
  os.makedirs(_OUT.value, exist_ok=True)
  if _WORKDIR.value:
    outpaint(_WORKDIR.value, _OUT.value)
  if _LATENT.value:
    latent_figures(_LATENT.value, _AUTOENCODER.value, _OUT.value)


if __name__ == '__main__':
  common.run(main)
