"""Every sampler at several step counts on one trained MNIST model.

  python benchmarks/samplers.py --workdir workdirs/mnist --num 1000 \
      --steps 10,20,50 --out docs/samplers_cpu_mnist.jsonl --rows docs/samplers

For each sampler (and Karras spacing for dpm++2m and euler) and step count it
draws `--num` samples with one seed, labels 0-9 in turn at the config's
guidance scale (as `evaluate` does), and reports the LeNet FD against the
held-out images, the confident share and the requested-class share, and the
seconds per sampling call (a call is one batch of the pipeline's default
size; the first call, which compiles, is timed apart). One JSON line per run
is appended to `--out`; with `--rows`, the first ten samples (classes 0-9) of
each sampler at `--row-steps` steps are written as one PNG row per sampler.

  python benchmarks/samplers.py --workdir workdirs/mnist --timing-batch 64       --steps 10,20,50 --out docs/samplers_timing_cpu.jsonl

times one call of 64 images per run instead, compiled ahead, with no
metrics: run it on an otherwise idle machine. `--table FILE [--timing
TIMES]` prints a JSON-lines file as the README's table.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from ddpm_jax import images as images_lib
from ddpm_jax import sharding
from ddpm_jax.metrics import mnist_lenet
from ddpm_jax.metrics.report import to_28
from ddpm_jax.pipeline import load
from recipes import cpu_name  # benchmarks/ is on the path when run as a script

RUNS = [('ddpm', None), ('ddim', None), ('dpm++2m', None), ('dpm++2m', 'karras'),
        ('euler', None), ('euler', 'karras'), ('euler_a', None), ('heun', None),
        ('dpm2', None)]


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


def time_one_call(pipe, batch, name, steps, labels, w, options) -> float:
  """Seconds of one sampling call of `batch` images, compiled ahead."""
  req = pipe.request(batch, 0, sampler=name, num_steps=steps,
                     labels=None if labels is None else labels[:batch],
                     guidance_scale=w, batch_size=batch, **options)
  fn = pipe._sample_fn(req.fn_args, req.batch)
  scale = None if req.scale is None else np.float32(req.scale)
  args = (pipe.params, jax.random.key(0), req.y, scale, None, None)
  compiled = fn.lower(*args).compile()
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  return time.perf_counter() - t0


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
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--workdir', default='workdirs/mnist')
  ap.add_argument('--num', type=int, default=1000)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--steps', default='10,20,50')
  ap.add_argument('--runs', default=None,
                  help='sampler[:karras],... (default: all nine)')
  ap.add_argument('--out', default='/tmp/samplers.jsonl')
  ap.add_argument('--rows', default=None, help='folder for the PNG rows')
  ap.add_argument('--row-steps', type=int, default=20)
  ap.add_argument('--timing-batch', type=int, default=0,
                  help='only time one call of this many images per run, '
                       'compiled ahead (no metrics); appends to --out')
  ap.add_argument('--timing', default=None,
                  help='with --table: take the seconds per call from this file')
  ap.add_argument('--table', default=None,
                  help='print the README table of this JSON-lines file and exit')
  args = ap.parse_args()
  if args.table:
    print_table(args.table, args.timing)
    return
  runs = RUNS if not args.runs else [
      tuple(r.split(':')) if ':' in r else (r, None) for r in args.runs.split(',')]
  pipe = load(args.workdir)
  classifier, held, _ = mnist_lenet.mnist_classifier(
      os.path.join(args.workdir, 'eval'))
  k = pipe.num_classes
  labels = list(np.arange(args.num) % k) if k else None
  w = pipe.config.sampling.guidance_scale if k else None
  cpu = cpu_name()
  if args.rows:
    os.makedirs(args.rows, exist_ok=True)
  for steps in [int(s) for s in args.steps.split(',')]:
    for name, spacing in runs:
      options = {'spacing': spacing} if spacing else {}
      if args.timing_batch:
        row = dict(sampler=name, spacing=spacing or 'model', steps=steps,
                   batch=args.timing_batch, guidance_scale=w, cpu=cpu,
                   seconds_per_call=round(time_one_call(
                       pipe, args.timing_batch, name, steps, labels, w, options), 3))
        print(json.dumps(row), flush=True)
        with open(args.out, 'a') as f:
          f.write(json.dumps(row) + '\n')
        continue
      req = pipe.request(args.num, args.seed, sampler=name, num_steps=steps,
                         labels=labels, guidance_scale=w, **options)
      x, first, per_call = timed_run(pipe, req)
      x28 = to_28(x, pipe.config.data.resize)   # a latent model's 32×32, cropped
      m = mnist_lenet.mnist_metrics(classifier, x28, held)
      if k:
        _, probs = mnist_lenet.classify(classifier, x28)
        m['requested_class_accuracy'] = float(
            (probs.argmax(1) == np.arange(len(x)) % k).mean())
      row = dict(sampler=name, spacing=spacing or 'model', steps=steps,
                 num=args.num, batch=req.batch, guidance_scale=w,
                 seconds_per_call=round(per_call, 2),
                 first_call_seconds=round(first, 2), step=pipe.step, cpu=cpu,
                 jax=jax.__version__, **m)
      print(json.dumps(row), flush=True)
      with open(args.out, 'a') as f:
        f.write(json.dumps(row) + '\n')
      if args.rows and steps == args.row_steps:
        tag = name.replace('+', 'p') + ('_karras' if spacing else '')
        images_lib.save_grid(x[:10], os.path.join(args.rows, f'{tag}.png'), nrow=10)


if __name__ == '__main__':
  main()
