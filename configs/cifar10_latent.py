"""A class-conditional latent DDPM on CIFAR-10 in the 16×16×4 latent space of
configs/cifar10_autoencoder.py, for accelerators (train that first).

Run:
  python train.py --config configs/cifar10_latent.py --workdir workdirs/cifar10_latent

The UNet of the paper's CIFAR-10 model at half the resolution (ch 128,
mult (1, 2, 2), 2 blocks, attention at 8×8), v-prediction and guidance 1.5
as the MNIST default. Not run: no figure is claimed.
"""

import os

from ddpm_jax.config import base_config, load_config_file


def get_config():
  c = base_config()
  c.autoencoder = load_config_file(os.path.join(
      os.path.dirname(__file__), 'cifar10_autoencoder.py')).autoencoder
  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True
  c.latent.autoencoder_workdir = 'workdirs/cifar10_autoencoder'
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (8,)
  c.model.num_groups = 32
  c.model.dropout = 0.1
  c.model.class_conditional = True
  c.diffusion.prediction = 'v'
  c.training.batch_size = 128
  c.training.num_steps = 200_000
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 5000
  c.training.ema_decay = 0.9999
  c.training.checkpoint_every = 5000
  c.training.sample_every = 10_000
  c.training.num_sample_images = 40
  c.sampling.sampler = 'dpm++2m'
  c.sampling.num_steps = 20
  c.sampling.guidance_scale = 1.5
  c.sampling.clip_x0 = False
  return c
