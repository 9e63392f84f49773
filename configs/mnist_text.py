"""Text prompts on MNIST-5k, in the 8×8×4 latent space of
configs/mnist_autoencoder.py (train that first): captions in English and
Spanish from the labels, a byte-level transformer text encoder trained with
the UNet, and cross-attention in the UNet.

Run:
  python train.py --config configs/mnist_autoencoder.py --workdir workdirs/mnist_autoencoder
  python train.py --config configs/mnist_text.py --workdir workdirs/mnist_text
  python sample.py --workdir workdirs/mnist_text --prompt "un siete" --prompt "a handwritten three" --num 16 --out text.png

configs/mnist_latent.py with prompts instead of labels: the class embedding
goes; a byte-token text encoder comes (a width-5 byte convolution, then one
pre-LN transformer layer: width 64, 4 heads, 48 tokens); every block at 4×4
and the middle one is a transformer block that cross-attends to the prompt,
and an attention-pooled prompt vector is added to the time embedding.
Captions: prefix × body × suffix templates, about 300 per digit in both
languages (captions.TRAIN); the held-out templates (captions.HELD_OUT) are
for measuring. Prompt dropout 0.1; guidance 3.

Measured on a 2-core Intel Xeon with AVX-512, 2026-11-22
(docs/results/text.md): the training command above on one core
(taskset -c 0), 4,000 steps in 1,152 s; then `python -m experiments.prompts
--workdir workdirs/mnist_text --num 500 --scales 1,3,5 --out FILE`: at w=3,
100.0% of English prompts and 95.8% of Spanish ones from held-out templates
drawn as the digit they name (LeNet judge; chance 10%), LeNet FD 60.7 / 53.9.
The same page compares the encoder's options and the pixel variant
(configs/mnist_text_pixel.py).
"""

import os

from ddpm_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), 'mnist_latent.py'))
  c.model.class_conditional = False
  c.model.text_conditional = True
  c.model.text_dim = 64
  c.model.text_layers = 1
  c.model.text_conv = 5
  c.model.text_pool = 'attention'
  c.model.text_heads = 4
  c.model.cross_attn_resolutions = (4,)
  c.data.captions = 'digits'
  c.training.num_steps = 4000
  c.training.checkpoint_every = 500
  c.sampling.guidance_scale = 3.0
  return c
