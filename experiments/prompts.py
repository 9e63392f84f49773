"""python -m experiments.prompts --workdir workdirs/mnist_text --num 500 --scales 1,3,5 --out docs/prompts_cpu_mnist.jsonl --grid docs/text_grid.png

Prompt accuracy of a text model, for the README's table and grid. For each
language (English, Spanish) and guidance scale it runs
`python -m ddpm_jax.cli.evaluate --language L --guidance-scale W --num N`'s
function: N samples for prompts from the held-out templates (never trained
on) naming the digits 0-9 in turn, the share the LeNet puts in the class the
prompt names, the LeNet FD against the held-out images and the confident
share. One JSON line per run (with the CPU, JAX version and date) is printed
and appended to `--out`. With `--grid`, one row of 8 samples per prompt of
GRID_PROMPTS at `--grid-scale` (default: the config's guidance scale) is
written as a PNG.
"""

import json
import time

from absl import flags

from benchmarks import common
from ddpm_jax import images as images_lib
from ddpm_jax.metrics.report import evaluate
from ddpm_jax.pipeline import load

# Held-out templates only (captions.HELD_OUT), both languages.
GRID_PROMPTS = ('a picture of the number three', 'una imagen del número siete',
                'please draw an eight', 'dibuja un cero',
                'I wrote a five on paper', 'escribí un dos en un papel')

_WORKDIR = flags.DEFINE_string('workdir', None, 'Text model workdir.', required=True)
_NUM = flags.DEFINE_integer('num', 500, 'Samples per run.')
_SCALES = flags.DEFINE_list('scales', ['1', '3', '5'], 'Guidance scales.')
_LANGUAGES = flags.DEFINE_list('languages', ['en', 'es'], 'Prompt languages.')
_OUT = flags.DEFINE_string('out', None, 'JSON-lines file to append to.', required=True)
_GRID = flags.DEFINE_string('grid', None, 'PNG path of the prompt grid.')
_GRID_SCALE = flags.DEFINE_float('grid-scale', None, "Guidance scale of the grid "
                                 "(default: the config's).")
flags.register_validator('scales', common.is_float_list, 'comma-separated numbers')


def main() -> None:
  head = common.header()
  for lang in _LANGUAGES.value:
    for w in (float(s) for s in _SCALES.value):
      t0 = time.time()
      r, _ = evaluate(_WORKDIR.value, num=_NUM.value, guidance_scale=w, language=lang,
                      progress=False)
      row = {'language': lang, 'guidance_scale': w, 'num': _NUM.value,
             'prompt_accuracy': r['requested_class_accuracy'], 'fd': r['fd'],
             'confident_share': r['confident_share'], 'step': r['step'],
             'sampler': r['sampler'], 'steps': r['steps'],
             'seconds': round(time.time() - t0, 1), **head}
      print(json.dumps(row), flush=True)
      common.append_jsonl(_OUT.value, row)
  if _GRID.value:
    pipe = load(_WORKDIR.value)
    w = _GRID_SCALE.value
    w = w if w is not None else pipe.config.sampling.guidance_scale
    x = pipe.sample(num=8 * len(GRID_PROMPTS), seed=0, prompt=list(GRID_PROMPTS),
                    guidance_scale=w)
    images_lib.save_grid(x, _GRID.value, nrow=8)
    print(f'wrote {_GRID.value} (w={w}): ' + ' | '.join(GRID_PROMPTS))


if __name__ == '__main__':
  common.run(main)
