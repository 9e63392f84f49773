"""The KL autoencoder on CIFAR-10, for accelerators (needs the TFDS data).

Run:
  python train.py --config configs/cifar10_autoencoder.py --workdir workdirs/cifar10_autoencoder
  python train.py --config configs/cifar10_latent.py --workdir workdirs/cifar10_latent

f = 2: a 16×16×4 latent of the 32×32×3 image (at f = 4 an 8×8 latent keeps
too little of a CIFAR image). ch 64, mult (1, 2), 2 blocks; L1 + 1e-6·KL.
Not run: this machine has no GPU time for it and no prepared TFDS data, so no
figure is claimed.
"""

from ddpm_jax.config import base_config


def get_config():
  c = base_config()
  c.task = 'autoencoder'
  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True
  c.autoencoder.ch = 64
  c.autoencoder.ch_mult = (1, 2)
  c.autoencoder.num_res_blocks = 2
  c.autoencoder.num_groups = 32
  c.training.batch_size = 128
  c.training.num_steps = 50_000
  c.training.learning_rate = 4.5e-4
  c.training.warmup_steps = 1000
  c.training.ema_decay = 0.999
  c.training.checkpoint_every = 5000
  c.training.sample_every = 5000
  c.training.num_sample_images = 40
  return c
