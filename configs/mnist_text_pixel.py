"""configs/mnist_text.py in pixel space (28×28), for comparison with the
latent text default.

Run:
  python train.py --config configs/mnist_text_pixel.py --workdir workdirs/mnist_text_pixel
  python sample.py --workdir workdirs/mnist_text_pixel --prompt "un siete" --prompt "a handwritten three" --num 16 --out text.png

The pixel default (configs/mnist.py) with prompts instead of labels: the
class embedding goes, mnist_text's text encoder comes (its byte
convolution, transformer layer and attention pooling), and the blocks at
14×14 and 7×7 (and the middle) become transformer blocks that cross-attend
to the prompt. Captions and guidance as configs/mnist_text.py.

Measured only with a 2-layer, mean-pooled encoder without the byte
convolution (--config.model.text_layers=2 --config.model.text_pool=mean
--config.model.text_conv=0), on a 2-core Intel Xeon with AVX-512,
2026-11-21/22 (docs/results/text.md): 750 steps in 875 s on one core,
24.5% (English) / 12.5% (Spanish) of 200 held-out prompts at w=3, against
the latent model's 43.5% / 16.5% in the same time. Not measured with the
shipped encoder.
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
