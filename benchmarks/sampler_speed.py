"""python -m benchmarks.sampler_speed --workdir workdirs/mnist --batch 64 --steps 10,20,50 --out docs/samplers_timing_cpu.jsonl

Seconds per sampling call of every sampler at several step counts, on one
trained model. For each sampler (and Karras spacing for dpm++2m and euler)
and step count it compiles one call of `--batch` images ahead (labels 0-9 in
turn at the config's guidance scale, for a class-conditional model), then
times that one call until `block_until_ready` returns; no metrics. Run it on
an otherwise idle machine. Prints one JSON line per run (sampler, spacing,
steps, batch, guidance_scale, seconds_per_call, and the CPU, JAX version and
date) and appends it to `--out`. `python -m experiments.samplers --table
FILE --timing OUT` merges these times into the README's sampler table.
"""

import json

from absl import flags
import jax
import numpy as np

from benchmarks import common
from ddpm_jax.pipeline import load

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/mnist', 'Trained workdir.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Images per timed sampling call.')
_STEPS = flags.DEFINE_list('steps', ['10', '20', '50'], 'Step counts.')
_RUNS = flags.DEFINE_string('runs', None, 'sampler[:karras],... (default: all nine)')
_OUT = flags.DEFINE_string('out', None, 'JSON-lines file to append to.')
flags.register_validator('steps', common.is_int_list, 'comma-separated integers')
flags.register_validator('batch', lambda b: b > 0, 'a positive number of images')


def time_one_call(pipe, batch, name, steps, labels, w, options) -> float:
  """Seconds of one sampling call of `batch` images, compiled ahead."""
  req = pipe.request(batch, 0, sampler=name, num_steps=steps,
                     labels=None if labels is None else labels[:batch],
                     guidance_scale=w, batch_size=batch, **options)
  fn = pipe._sample_fn(req.fn_args, req.batch)
  scale = None if req.scale is None else np.float32(req.scale)
  args = (pipe.params, jax.random.key(0), req.y, scale, None, None)
  compiled = fn.lower(*args).compile()
  _, (seconds,) = common.timed(compiled, *args, warmup=False)
  return seconds


def main() -> None:
  pipe = load(_WORKDIR.value)
  k = pipe.num_classes
  batch = _BATCH.value
  labels = list(np.arange(batch) % k) if k else None
  w = pipe.config.sampling.guidance_scale if k else None
  head = common.header()
  for steps in [int(s) for s in _STEPS.value]:
    for name, spacing in common.parse_runs(_RUNS.value):
      options = {'spacing': spacing} if spacing else {}
      row = dict(sampler=name, spacing=spacing or 'model', steps=steps,
                 batch=batch, guidance_scale=w, **head,
                 seconds_per_call=round(time_one_call(
                     pipe, batch, name, steps, labels, w, options), 3))
      print(json.dumps(row), flush=True)
      if _OUT.value:
        common.append_jsonl(_OUT.value, row)


if __name__ == '__main__':
  common.run(main)
