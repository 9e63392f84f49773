"""configs/mnist_text.py in pixel space (28×28): the comparison that made
the latent model the text default (see its docstring).

Run:
  python train.py --config configs/mnist_text_pixel.py --workdir workdirs/mnist_text_pixel
  python sample.py --workdir workdirs/mnist_text_pixel --prompt "un siete" --prompt "a handwritten three" --num 16 --out text.png

The pixel default (configs/mnist.py) with prompts instead of labels: the
class embedding goes, a 2-layer text encoder (width 64, 4 heads, 48 byte
tokens) comes, and the blocks at 14×14 and 7×7 (and the middle) become
transformer blocks that cross-attend to the prompt; the prompt's mean is
added to the time embedding. Captions and guidance as configs/mnist_text.py.
About 0.5 s a step alone on the 2-core Xeon (2.4× the latent model's).
"""

import os

from ddpm_jax.config import load_config_file


def get_config():
  here = os.path.dirname(__file__)
  c = load_config_file(os.path.join(here, 'mnist.py'))
  text = load_config_file(os.path.join(here, 'mnist_text.py'))
  for key in ('class_conditional', 'text_conditional', 'text_dim',
              'text_layers', 'text_heads', 'text_max_len', 'text_pool',
              'text_conv'):
    c.model[key] = text.model[key]
  c.data.captions = text.data.captions
  c.sampling.guidance_scale = text.sampling.guidance_scale
  c.model.cross_attn_resolutions = (14, 7)
  c.training.num_steps = 2000
  c.training.checkpoint_every = 500
  return c
