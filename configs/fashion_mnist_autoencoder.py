"""The KL autoencoder on Fashion-MNIST (needs the TFDS dataset prepared; see
configs/fashion_mnist.py for the one-line preparation).

Run:
  python train.py --config configs/fashion_mnist_autoencoder.py --workdir workdirs/fashion_mnist_autoencoder
  python train.py --config configs/fashion_mnist_latent.py --workdir workdirs/fashion_mnist_latent

The MNIST autoencoder's shape (configs/mnist_autoencoder.py): 28×28 padded
to 32×32, f = 4, an 8×8×4 latent; clothes have more texture than digits, so
it is wider (ch 64). Not run here: this machine has no prepared TFDS data,
so no figure is claimed (the command stops with one line naming the
missing dataset).
"""

import os

from ddpm_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), 'mnist_autoencoder.py'))
  c.data.name = 'fashion_mnist'
  c.autoencoder.ch = 64
  c.autoencoder.num_groups = 16
  c.training.num_steps = 5000
  c.training.checkpoint_every = 1000
  return c
