"""Prompt accuracy of a text model, for the README's table and grid.

  python benchmarks/prompts.py --workdir workdirs/mnist_text --num 500 \
      --scales 1,3,5 --out docs/prompts_cpu_mnist.jsonl --grid docs/text_grid.png

For each language (English, Spanish) and guidance scale it runs
`python -m ddpm_jax.cli.evaluate --language L --guidance-scale W --num N`'s
function: N samples for prompts from the held-out templates (never trained
on) naming the digits 0-9 in turn, the share the LeNet puts in the class the
prompt names, the LeNet FD against the held-out images and the confident
share. One JSON line per run is appended to `--out` (the CPU named). With
`--grid`, one row of 8 samples per prompt of GRID_PROMPTS at `--grid-scale`.
"""

import argparse
import json
import os
import time

from ddpm_jax import images as images_lib
from ddpm_jax.metrics.report import evaluate
from ddpm_jax.pipeline import load
from recipes import cpu_name  # benchmarks/ is on the path when run as a script

# Held-out templates only (captions.HELD_OUT), both languages.
GRID_PROMPTS = ('a picture of the number three', 'una imagen del número siete',
                'please draw an eight', 'dibuja un cero',
                'I wrote a five on paper', 'escribí un dos en un papel')


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--num', type=int, default=500)
  p.add_argument('--scales', default='1,3,5')
  p.add_argument('--languages', default='en,es')
  p.add_argument('--out', required=True)
  p.add_argument('--grid', default=None)
  p.add_argument('--grid-scale', type=float, default=None)
  a = p.parse_args()
  rows = []
  for lang in a.languages.split(','):
    for w in (float(s) for s in a.scales.split(',')):
      t0 = time.time()
      r, _ = evaluate(a.workdir, num=a.num, guidance_scale=w, language=lang,
                      progress=False)
      row = {'language': lang, 'guidance_scale': w, 'num': a.num,
             'prompt_accuracy': r['requested_class_accuracy'], 'fd': r['fd'],
             'confident_share': r['confident_share'], 'step': r['step'],
             'sampler': r['sampler'], 'steps': r['steps'],
             'seconds': round(time.time() - t0, 1), 'cpu': cpu_name()}
      print(json.dumps(row), flush=True)
      rows.append(row)
      with open(a.out, 'a') as f:
        f.write(json.dumps(row) + '\n')
  if a.grid:
    pipe = load(a.workdir)
    w = a.grid_scale if a.grid_scale is not None else pipe.config.sampling.guidance_scale
    x = pipe.sample(num=8 * len(GRID_PROMPTS), seed=0, prompt=list(GRID_PROMPTS),
                    guidance_scale=w)
    images_lib.save_grid(x, a.grid, nrow=8)
    print(f'wrote {a.grid} (w={w}): ' + ' | '.join(GRID_PROMPTS))


if __name__ == '__main__':
  main()
