"""The default recipe (configs/mnist.py) without class labels.

Run:
  python train.py --config configs/mnist_uncond.py --workdir workdirs/mnist_uncond

The same UNet, v-prediction and sampler as the default, unconditional.
Measured only in the recipe comparison (docs/results/quality.md, recipe
"small_v"; 2-core Intel Xeon with AVX-512, 2026-11-21; `python -m
experiments.recipes --budget 150 --recipes small_v`): 654 steps in 150 s,
LeNet FD 55.8, confident share 0.564, entropy 3.25 bits. At equal wall-clock
time the labels and guidance of the default are what make its digits
legible. Its own 800-step run has not been evaluated.
"""

import os

from ddpm_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), 'mnist.py'))
  c.model.class_conditional = False
  c.training.num_sample_images = 36
  c.sampling.guidance_scale = 1.0
  return c
