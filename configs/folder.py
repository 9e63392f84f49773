"""Your own images: a DDPM on a folder of image files at 32x32 RGB.

Run:
  python train.py --config configs/folder.py --config.data.folder=PATH
  # labels from sub-folders (one per class), sampled with --label NAME or id:
  python train.py --config configs/folder.py --config.data.folder=PATH \
      --config.model.class_conditional=True
  # captions from PATH/metadata.jsonl or a .txt beside each image:
  python train.py --config configs/folder.py --config.data.folder=PATH \
      --config.model.text_conditional=True --config.data.captions=folder \
      --config.model.cross_attn_resolutions='(8,)'

Files: .png .jpg .jpeg .webp .bmp .gif (first frame), any size and mode;
the shorter side is resized to data.image_size and the centre cropped
(data.crop='random' for random crops); broken files are skipped and named.
data.workers > 0 decodes in that many processes.

Measured (docs/data.md; 2-core Intel Xeon with AVX-512): on examples/shapes
with labels, 1,200 steps in 9 min 37 s (2.2 steps/s), and every row of the
sampled grid holds its class.
"""

from ddpm_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = 'folder'
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True
  c.data.workers = 2
  c.model.ch = 32
  c.model.num_groups = 8
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (8,)
  c.diffusion.prediction = 'v'
  c.training.num_steps = 1200
  c.training.checkpoint_every = 400
  c.training.num_sample_images = 36
  c.sampling.sampler = 'dpm++2m'
  c.sampling.num_steps = 20
  c.sampling.guidance_scale = 1.5
  return c
