"""python -m experiments.make_shapes --out examples/shapes --per_class 40

Draws the small image folder the README trains on (examples/shapes): one
sub-folder per class (circle, square, triangle), each image one filled shape
of a random bright colour on a random dark background, of random size
(24-79 pixels a side, so most are not square), saved in turn as PNG, JPEG
and WebP. Seeded: the same files every time.
"""

import os

import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from benchmarks import common

_OUT = flags.DEFINE_string('out', 'examples/shapes', 'Folder to write.')
_PER_CLASS = flags.DEFINE_integer('per_class', 40, 'Images per class.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')

CLASSES = ('circle', 'square', 'triangle')


def draw(cls: str, rng: np.random.Generator) -> Image.Image:
  w, h = int(rng.integers(24, 80)), int(rng.integers(24, 80))
  img = Image.new('RGB', (w, h), tuple(int(v) for v in rng.integers(0, 90, 3)))
  d = ImageDraw.Draw(img)
  fg = tuple(int(v) for v in rng.integers(140, 256, 3))
  cx, cy = w / 2, h / 2
  r = min(w, h) * rng.uniform(0.25, 0.4)
  if cls == 'circle':
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
  elif cls == 'square':
    d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
  else:
    d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
  return img


def main() -> None:
  rng = np.random.default_rng(_SEED.value)
  for cls in CLASSES:
    os.makedirs(os.path.join(_OUT.value, cls), exist_ok=True)
    for i in range(_PER_CLASS.value):
      ext = ('png', 'jpg', 'webp')[i % 3]
      draw(cls, rng).save(os.path.join(_OUT.value, cls, f'{i:03d}.{ext}'))
  print(f'wrote {len(CLASSES) * _PER_CLASS.value} images to {_OUT.value}')


if __name__ == '__main__':
  common.run(main)
