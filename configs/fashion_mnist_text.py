"""Text prompts on Fashion-MNIST (needs the TFDS dataset prepared and
configs/fashion_mnist_autoencoder.py trained first): configs/mnist_text.py
with the Fashion captions ("an ankle boot", "una bota", ...; captions.py):
configs/fashion_mnist_latent.py with mnist_text's UNet and text encoder.

Run:
  python train.py --config configs/fashion_mnist_autoencoder.py --workdir workdirs/fashion_mnist_autoencoder
  python train.py --config configs/fashion_mnist_text.py --workdir workdirs/fashion_mnist_text
  python sample.py --workdir workdirs/fashion_mnist_text --prompt "una bota" --prompt "a handbag" --num 16 --out fashion_text.png

Not run here (no prepared TFDS data on this machine): no figure is claimed.
"""

import os

from ddpm_jax.config import load_config_file


def get_config():
  here = os.path.dirname(__file__)
  c = load_config_file(os.path.join(here, 'fashion_mnist_latent.py'))
  text = load_config_file(os.path.join(here, 'mnist_text.py'))
  c.model = text.model
  c.sampling.guidance_scale = text.sampling.guidance_scale
  c.data.captions = 'fashion'
  return c
