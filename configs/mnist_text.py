"""Text prompts on MNIST-5k: captions in English and Spanish from the labels,
a byte-level transformer text encoder trained with the UNet, and
cross-attention in the UNet (pixel space, 28×28).

Run:
  python train.py --config configs/mnist_text.py --workdir workdirs/mnist_text
  python sample.py --workdir workdirs/mnist_text --prompt "un siete" --prompt "a handwritten three" --num 16 --out text.png

The pixel default (configs/mnist.py) with prompts instead of labels: the
class embedding goes, a 2-layer text encoder (width 64, 4 heads, 48 byte
tokens) comes, and the blocks at 14×14 and 7×7 (and the middle) become
transformer blocks that cross-attend to the prompt. Captions: 15 training
sentences per digit (captions.TRAIN, both languages); the held-out templates
(captions.HELD_OUT) are for measuring. Prompt dropout 0.1 for guidance.

Measured: see the README, "Text prompts (MNIST)".
"""

import os

from ddpm_jax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(__file__), 'mnist.py'))
  c.model.class_conditional = False
  c.model.text_conditional = True
  c.model.text_dim = 64
  c.model.text_layers = 2
  c.model.text_heads = 4
  c.model.cross_attn_resolutions = (14, 7)
  c.data.captions = 'digits'
  c.training.num_steps = 2000
  c.training.checkpoint_every = 500
  c.sampling.guidance_scale = 3.0
  return c
