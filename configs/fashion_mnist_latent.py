"""A class-conditional latent DDPM on Fashion-MNIST, in the latent space of
configs/fashion_mnist_autoencoder.py (train that first; needs the TFDS data).

Run:
  python train.py --config configs/fashion_mnist_latent.py --workdir workdirs/fashion_mnist_latent
  python sample.py --workdir workdirs/fashion_mnist_latent --out fashion.png

The MNIST latent config (configs/mnist_latent.py) on Fashion-MNIST's ten
classes, trained longer. Not run here (no prepared TFDS data on this
machine): no figure is claimed.
"""

import os

from ddpm_jax.config import load_config_file


def get_config():
  here = os.path.dirname(__file__)
  c = load_config_file(os.path.join(here, 'mnist_latent.py'))
  c.autoencoder = load_config_file(
      os.path.join(here, 'fashion_mnist_autoencoder.py')).autoencoder
  c.data.name = 'fashion_mnist'
  c.latent.autoencoder_workdir = 'workdirs/fashion_mnist_autoencoder'
  c.training.num_steps = 10_000
  c.training.checkpoint_every = 1000
  return c
