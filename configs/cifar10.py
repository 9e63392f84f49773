"""CIFAR-10 with the paper's exact hyperparameters (Ho et al., 2020).

Run (on GPU/TPU; CIFAR-10 must be prepared with TFDS first):
  python train.py --config configs/cifar10.py --workdir workdirs/cifar10

UNet ch 128, mult (1, 2, 2, 2), 2 blocks, attention at 16×16, dropout 0.1:
35,746,307 params. Adam 2e-4, 5000 warm-up steps, gradient clip 1, batch 128,
EMA 0.9999, 800k steps, random horizontal flip, linear betas 1e-4..0.02 over
T=1000, sampling variance beta ("fixedlarge").
The paper reports FID 3.17, IS 9.46 and <= 3.75 bits/dim (test) after 800k
steps; it trained at 21 steps/s on a TPU v3-8. We have not reproduced these.
"""

from ddpm_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.num_groups = 32
  c.training.batch_size = 128
  c.training.num_steps = 800_000
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 5000
  c.training.grad_clip = 1.0
  c.training.ema_decay = 0.9999
  c.training.log_every = 100
  c.training.checkpoint_every = 10_000
  c.training.sample_every = 50_000
  c.training.num_sample_images = 64
  c.sampling.var_type = 'fixedlarge'
  return c
