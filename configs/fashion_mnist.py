"""Fashion-MNIST resized to 32×32 (needs the TFDS dataset prepared).

Run:
  python train.py --config configs/fashion_mnist.py --workdir workdirs/fashion
Prepare the data once, on a machine with internet:
  python -c "import tensorflow_datasets as tfds; tfds.builder('fashion_mnist').download_and_prepare(file_format='array_record')"

UNet ch 64, mult (1, 2, 2), 2 blocks, attention at 16×16. Not yet trained by
us: no expected figure is claimed.
"""

from ddpm_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'fashion_mnist'
  c.data.image_size = 32
  c.model.ch = 64
  c.model.attn_resolutions = (16,)
  c.model.num_groups = 16
  c.training.batch_size = 128
  c.training.num_steps = 20_000
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 1000
  c.training.ema_decay = 0.999
  c.training.checkpoint_every = 2000
  c.training.sample_every = 5000
  c.training.num_sample_images = 64
  return c
