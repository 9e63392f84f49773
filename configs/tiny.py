"""A tiny config for tests: 8×8 MNIST-5k, T=50, a UNet of 44,969 params.

Run: python train.py --config configs/tiny.py --workdir /tmp/tiny
Expected: finishes in seconds on a CPU. No sample grid (num_sample_images 0:
the tests that want one ask for it); its samples are not meant to look like
digits.
"""

from ddpm_jax.config import base_config


def get_config():
  c = base_config()
  c.data.image_size = 8
  c.model.ch = 8
  c.model.ch_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.num_groups = 4
  c.model.dropout = 0.1
  c.diffusion.num_timesteps = 50
  c.training.batch_size = 8
  c.training.num_steps = 6
  c.training.warmup_steps = 2
  c.training.log_every = 2
  c.training.checkpoint_every = 3
  c.training.keep_checkpoints = 2
  c.training.num_sample_images = 0
  return c
