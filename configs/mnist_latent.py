"""A class-conditional latent DDPM on MNIST-5k, in the 8×8×4 latent space of
configs/mnist_autoencoder.py (train that first).

Run:
  python train.py --config configs/mnist_autoencoder.py --workdir workdirs/mnist_autoencoder
  python train.py --config configs/mnist_latent.py --workdir workdirs/mnist_latent
  python sample.py --workdir workdirs/mnist_latent --out latent.png

As the pixel default (configs/mnist.py): v-prediction, labels with
classifier-free guidance 1.5, DPM-Solver++(2M) at 20 steps; the UNet works
at 8×8 and 4×4 (attention at 4×4). Latents are not bounded, so the sampler
does not clip its x0 prediction. ch 32, mult (1, 2), 2 blocks (1,004,868
params): at 8×8 a step costs about what the pixel default's does. The checkpoint holds a copy of the
autoencoder: sampling needs only this workdir.

Measured on a 2-core Intel Xeon with AVX-512, 2026-11-21
(docs/results/latent.md): trained for 180 s of wall-clock
(`python -m experiments.recipes --budget 180 --recipes pixel_default,latent_default`;
1,875 steps), LeNet FD 15.6 (pixel default in the same time: 20.6),
confident share 0.961, 97.6% in the requested class, and 3.52 s per call of
256 images at DPM++(2M) 20 steps (pixel default: 12.27 s). The full
1,800-step run took 173 s in a fresh clone.
"""

import os

from ddpm_jax.config import load_config_file


def get_config():
  here = os.path.dirname(__file__)
  c = load_config_file(os.path.join(here, 'mnist.py'))
  c.autoencoder = load_config_file(os.path.join(here, 'mnist_autoencoder.py')).autoencoder
  c.data.image_size = 32
  c.data.resize = 'pad'       # 28 → 32 with a black border; evaluation crops back
  c.latent.autoencoder_workdir = 'workdirs/mnist_autoencoder'
  c.model.ch = 32
  c.model.num_groups = 8
  c.model.ch_mult = (1, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (4,)
  c.sampling.clip_x0 = False
  c.training.num_steps = 1800
  c.training.checkpoint_every = 600
  return c
