"""python -m experiments.showcase --workdir workdirs/mnist_uncond --cond_workdir workdirs/mnist --out docs --num 8

The README's sampler figures, from an unconditional model (--workdir,
configs/mnist_uncond.py) and a class-conditional one (--cond_workdir,
configs/mnist.py):
- <out>/samplers.png: ddpm, ddim and dpm++2m at each of --steps, one row of
  --num images each (the same seed throughout), with the seconds of each
  setting: steady-state seconds per call (compiled once before timing, then
  `block_until_ready`), measured side by side in one run on one machine;
- <out>/img2img.png: four real digits, img2img at strengths 0 .. 1 across;
- <out>/inpaint.png: the same digits with their bottom half regenerated, 4
  seeds each;
- <out>/guided_w0.png and <out>/guided_w<G>.png: 60 samples of the
  class-conditional model, labels 0-9, at guidance scale 0 (its unconditional
  branch) and --guidance; with their seconds, compilation included.
  `--cond_workdir=` (empty) leaves them out.
The times, with the CPU, JAX version and date, go to <out>/showcase.json.
"""

import json
import os

from absl import flags
import jax
import numpy as np

from benchmarks import common
from ddpm_jax import data as data_lib, images as images_lib
from ddpm_jax.pipeline import load

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/mnist_uncond',
                               'Unconditional workdir (configs/mnist_uncond.py).')
_COND = flags.DEFINE_string('cond_workdir', 'workdirs/mnist', 'Class-conditional '
                            'workdir (configs/mnist.py); empty: no guided grids.')
_OUT = flags.DEFINE_string('out', 'docs', 'Output folder.')
_NUM = flags.DEFINE_integer('num', 8, 'Images per sampler setting.')
_STEPS = flags.DEFINE_list('steps', ['1000', '100', '50', '20', '10'], 'Step counts.')
_GUIDANCE = flags.DEFINE_float('guidance', 3.0, 'Guidance scale of the guided grid.')


def main():
  os.makedirs(_OUT.value, exist_ok=True)
  report = {**common.header(), 'device': jax.devices()[0].platform,
            'num_images': _NUM.value, 'sampler_seconds': {}}
  pipe = load(_WORKDIR.value)
  rows = []
  for name in ('ddpm', 'ddim', 'dpm++2m'):
    row = []
    for n in map(int, _STEPS.value):
      x, (secs,) = common.timed(lambda: pipe.sample(_NUM.value, seed=0, sampler=name,
                                                    num_steps=n))
      report['sampler_seconds'][f'{name}@{n}'] = round(secs, 3)
      print(f'{name:8s} {n:5d} steps: {secs:7.2f} s for {_NUM.value} images',
            flush=True)
      row.append(x)
    rows.append(row)
  # One row per (sampler, steps): 15 rows, the same seed throughout.
  grid = np.concatenate([np.concatenate(r) for r in rows])
  images_lib.save_grid(grid, os.path.join(_OUT.value, 'samplers.png'), nrow=_NUM.value)

  # img2img: one real digit per row, strengths 0 .. 1 across.
  src = data_lib.load_embedded_mnist()
  digits = np.asarray(data_lib.preprocess(src.images[[3, 1203, 2507, 4011]],
                                          28, False, None))
  strengths = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
  strip = []
  for d in digits:
    for s in strengths:
      strip.append(pipe.sample(1, seed=1, sampler='ddim', num_steps=50,
                               init_image=d, strength=s)[0])
  images_lib.save_grid(np.stack(strip), os.path.join(_OUT.value, 'img2img.png'),
                       nrow=len(strengths))
  report['img2img_strengths'] = strengths

  # Inpainting: the bottom half of each digit is regenerated, 4 seeds each.
  mask = np.zeros((28, 28, 1), np.float32)
  mask[14:] = 1.0
  rows = []
  for i, d in enumerate(digits):
    out = pipe.sample(4, seed=i, init_image=d, mask=mask, sampler='ddpm',
                      num_steps=250)
    rows.append(np.concatenate([np.stack([d, d * (1 - mask) - mask]), out]))
  images_lib.save_grid(np.concatenate(rows), os.path.join(_OUT.value, 'inpaint.png'),
                       nrow=6)

  if _COND.value:
    cond = load(_COND.value)
    for w in (0.0, _GUIDANCE.value):  # 0: the unconditional branch, for contrast
      x, (secs,) = common.timed(lambda: cond.sample(
          60, seed=0, labels=list(range(10)), guidance_scale=w, sampler='ddim',
          num_steps=100), warmup=False)
      images_lib.save_grid(x, os.path.join(_OUT.value, f'guided_w{w:g}.png'), nrow=6)
      report[f'guided_w{w:g}_seconds_incl_compile'] = round(secs, 2)
  print(json.dumps(report))
  common.write_json(os.path.join(_OUT.value, 'showcase.json'), report)


if __name__ == '__main__':
  common.run(main)
