"""python -m experiments.samplers --workdir workdirs/mnist --num 1000 --steps 10,20,50 --out docs/samplers_cpu_mnist.jsonl --rows docs/samplers

The quality of every sampler at several step counts on one trained MNIST
model. For each sampler (and Karras spacing for dpm++2m and euler) and step
count it draws `--num` samples with one seed, labels 0-9 in turn at the
config's guidance scale (as `evaluate` does), and reports the LeNet FD against the
held-out images, the confident share and the requested-class share, and the
seconds per sampling call (a call is one batch of the pipeline's default
size; the first call, which compiles, is timed apart). One JSON line per run
(with the CPU, JAX version and date) is printed and appended to `--out`; with
`--rows`, the first ten samples (classes 0-9) of each sampler at
`--row-steps` steps are written as one PNG row per sampler.

  python -m experiments.samplers --table docs/samplers_cpu_mnist.jsonl [--timing docs/samplers_timing_cpu.jsonl]

prints a JSON-lines file of this script as the README's table, with the
seconds per call taken from a file of `python -m benchmarks.sampler_speed`
if `--timing` names one.
"""

import json
import os
import time

from absl import flags
import jax
import numpy as np

from benchmarks import common
from ddpm_jax import images as images_lib
from ddpm_jax import sharding
from ddpm_jax.metrics import mnist_lenet
from ddpm_jax.metrics.report import to_28
from ddpm_jax.pipeline import load

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/mnist', 'Trained workdir.')
_NUM = flags.DEFINE_integer('num', 1000, 'Samples per run.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed of every run.')
_STEPS = flags.DEFINE_list('steps', ['10', '20', '50'], 'Step counts.')
_RUNS = flags.DEFINE_string('runs', None, 'sampler[:karras],... (default: all nine)')
_OUT = flags.DEFINE_string('out', '/tmp/samplers.jsonl', 'JSON-lines file to append to.')
_ROWS = flags.DEFINE_string('rows', None, 'Folder for the PNG rows.')
_ROW_STEPS = flags.DEFINE_integer('row-steps', 20, 'Step count of the PNG rows.')
_TIMING = flags.DEFINE_string('timing', None, 'With --table: take the seconds per '
                              'call from this file of benchmarks.sampler_speed.')
_TABLE = flags.DEFINE_string('table', None, 'Print the README table of this '
                             'JSON-lines file and exit.')
flags.register_validator('steps', common.is_int_list, 'comma-separated integers')


def timed_run(pipe, req):
  """(samples, seconds of the first call, mean seconds of the later calls):
  Pipeline.run's loop, with each call timed."""
  fn = pipe._sample_fn(req.fn_args, req.batch)
  root = jax.random.key(req.seed)
  scale = None if req.scale is None else np.float32(req.scale)
  xs, times = [], []
  for k, i in enumerate(range(0, req.num, req.batch)):
    n = min(req.batch, req.num - i)
    pad = lambda a: None if a is None else _pad(a[i:i + n], req.batch)
    t0 = time.perf_counter()
    x, _ = fn(pipe.params, root if k == 0 else jax.random.fold_in(root, k),
              pad(req.y), scale, None, None)
    x = np.asarray(sharding.gather(x))[:n]
    times.append(time.perf_counter() - t0)
    xs.append(x)
  later = times[1:] or times
  return np.concatenate(xs), times[0], float(np.mean(later))


def _pad(a, n):
  return a if len(a) == n else np.concatenate([a, np.repeat(a[:1], n - len(a), 0)])


def print_table(path: str, timing: str | None = None) -> None:
  """A Markdown table: one row per sampler and spacing, FD / confident share
  / seconds per call at each step count (from `timing` if given)."""
  rows = [json.loads(l) for l in open(path)]
  if timing:
    times = {(r['sampler'], r['spacing'], r['steps']): r['seconds_per_call']
             for r in map(json.loads, open(timing))}
    rows = [dict(r, seconds_per_call=times.get(
        (r['sampler'], r['spacing'], r['steps']), float('nan'))) for r in rows]
  steps = sorted({r['steps'] for r in rows})
  keys = list(dict.fromkeys((r['sampler'], r['spacing']) for r in rows))
  print('| sampler | σ spacing | ' + ' | '.join(
      f'{n} steps: FD / conf. / s per call' for n in steps) + ' |')
  print('| --- | --- |' + ' --- |' * len(steps))
  for name, spacing in keys:
    cells = []
    for n in steps:
      r = next((r for r in rows if (r['sampler'], r['spacing'], r['steps'])
                == (name, spacing, n)), None)
      cells.append('' if r is None else
                   f"{r['fd']:.1f} / {r['confident_share']:.3f} / {r['seconds_per_call']:.2f}")
    print(f'| {name} | {spacing} | ' + ' | '.join(cells) + ' |')


def main() -> None:
  for path in (_TABLE.value, _TIMING.value):
    if path and not os.path.isfile(path):
      common.fail(f'{path} does not exist')
  if _TABLE.value:
    print_table(_TABLE.value, _TIMING.value)
    return
  runs = common.parse_runs(_RUNS.value)
  pipe = load(_WORKDIR.value)
  classifier, held, _ = mnist_lenet.mnist_classifier(
      os.path.join(_WORKDIR.value, 'eval'))
  k = pipe.num_classes
  labels = list(np.arange(_NUM.value) % k) if k else None
  w = pipe.config.sampling.guidance_scale if k else None
  head = common.header()
  if _ROWS.value:
    os.makedirs(_ROWS.value, exist_ok=True)
  for steps in [int(s) for s in _STEPS.value]:
    for name, spacing in runs:
      options = {'spacing': spacing} if spacing else {}
      req = pipe.request(_NUM.value, _SEED.value, sampler=name, num_steps=steps,
                         labels=labels, guidance_scale=w, **options)
      x, first, per_call = timed_run(pipe, req)
      x28 = to_28(x, pipe.config.data.resize)   # a latent model's 32×32, cropped
      m = mnist_lenet.mnist_metrics(classifier, x28, held)
      if k:
        _, probs = mnist_lenet.classify(classifier, x28)
        m['requested_class_accuracy'] = float(
            (probs.argmax(1) == np.arange(len(x)) % k).mean())
      row = dict(sampler=name, spacing=spacing or 'model', steps=steps,
                 num=_NUM.value, batch=req.batch, guidance_scale=w,
                 seconds_per_call=round(per_call, 2),
                 first_call_seconds=round(first, 2), step=pipe.step, **head, **m)
      print(json.dumps(row), flush=True)
      common.append_jsonl(_OUT.value, row)
      if _ROWS.value and steps == _ROW_STEPS.value:
        tag = name.replace('+', 'p') + ('_karras' if spacing else '')
        images_lib.save_grid(x[:10], os.path.join(_ROWS.value, f'{tag}.png'), nrow=10)


if __name__ == '__main__':
  common.run(main)
