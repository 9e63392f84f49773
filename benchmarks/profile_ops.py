"""Where the time goes: a per-op profile of one sampling call and one train step.

  python benchmarks/profile_ops.py --config configs/mnist.py --batch 64 [--out docs/profile_cpu_mnist.json]

Traces the jitted network call (what every sampler step runs) and the jitted
train step with jax.profiler, then sums the host-thread events of XLA's
thunks by kind (convolution, fusion, dot, ...) and by op name. Prints the top
ops with their share of the traced time.
"""

import collections
import glob
import json
import os
import re
import tempfile

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import cli, data as data_lib, training
from ddpm_jax.config import load_config_file, validate
from ddpm_jax.xla_options import compiler_options

_CONFIG = flags.DEFINE_string('config', 'configs/mnist.py', 'Config file.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch.')
_REPEAT = flags.DEFINE_integer('repeat', 5, 'Traced calls of each.')
_TOP = flags.DEFINE_integer('top', 15, 'Ops to print.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')


def hlo_op_table(hlo_text: str) -> dict[str, str]:
  """Op name → what it computes: 'convolution 3x3 f32[...]', 'dot', 'reduce',
  'elementwise', ... (a fusion is named after its heaviest op)."""
  comps, cur, body = {}, None, []
  for line in hlo_text.splitlines():
    m = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if m:
      cur, body = m.group(1), []
      continue
    if line.startswith('}'):
      if cur:
        comps[cur] = body
      cur = None
      continue
    if cur is not None:
      body.append(line)
  table = {}
  for lines in comps.values():
    for line in lines:
      m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+?) ([\w\-]+)\(', line)
      if not m:
        continue
      name, shape, opcode = m.groups()
      called = re.search(r'calls=%?([\w.\-]+)', line)
      inner = comps.get(called.group(1), []) if called else [line]
      text = '\n'.join(inner)
      if ' convolution(' in text:
        conv = next(l for l in inner if ' convolution(' in l)
        win = re.search(r'window=\{size=(\S+?)[ ,}]', conv)
        out = re.search(r'= (\S+) convolution', conv).group(1)
        ins = re.findall(r'(f32\[[\d,]+\]|bf16\[[\d,]+\])', conv.split('convolution(')[1])
        table[name] = f'convolution {win.group(1) if win else ""} {" x ".join(ins)} -> {out}'
      elif ' dot(' in text:
        table[name] = 'dot ' + shape
      elif ' reduce(' in text or ' reduce-window(' in text:
        table[name] = 'reduce ' + shape
      elif opcode in ('fusion',):
        table[name] = 'elementwise ' + shape
      else:
        table[name] = f'{opcode} {shape}'
  return table


def _events(fn, repeat):
  jax.block_until_ready(fn())  # compiled and warm
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(repeat):
        jax.block_until_ready(fn())
    path, = glob.glob(os.path.join(d, '**', '*.xplane.pb'), recursive=True)
    prof = jax.profiler.ProfileData.from_file(path)
  out = []
  for plane in prof.planes:
    for line in plane.lines:
      for ev in line.events:
        out.append((plane.name, line.name, ev.name, ev.duration_ns))
  return out


def _kind(name: str) -> str:
  base = re.sub(r'[._]\d+$', '', name.split('/')[-1])
  for k in ('convolution', 'fusion', 'dot', 'reduce', 'copy', 'transpose',
            'concatenate', 'dynamic-update-slice', 'rng', 'sort', 'while', 'call'):
    if k in base:
      return k
  return base


def summarize(events, top, table):
  """Sums XLA op events (names of HLO instructions) on the host threads, by
  op and by what the op computes (from `hlo_op_table`)."""
  by_op, by_kind = collections.Counter(), collections.Counter()
  for plane, line, name, ns in events:
    if not plane.startswith('/host:CPU') or line in ('python3', 'python'):
      continue
    if not re.search(r'(convolution|fusion|dot|reduce|copy|transpose|concatenate|'
                     r'custom-call|select|add|multiply|broadcast|rng|slice|while)', name):
      continue
    what = table.get(name, _kind(name))
    by_op[f'{name}: {what}'] += ns
    by_kind[what.split(' ')[0]] += ns
  total = sum(by_op.values()) or 1
  return {'traced_ms': total / 1e6,
          'by_kind': {k: round(100 * v / total, 1) for k, v in by_kind.most_common()},
          'top_ops': [(k, round(100 * v / total, 1)) for k, v in by_op.most_common(top)]}


def main(argv):
  del argv
  config = load_config_file(_CONFIG.value)
  config.training.batch_size = _BATCH.value
  validate(config)
  B, d = _BATCH.value, config.data
  setup, state = training.init_model_and_state(config)
  params = jax.tree.map(lambda p: p + 0.01, state.ema_params)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, d.image_size, d.image_size, d.channels)),
                  jnp.float32)
  t = jnp.full((B,), 500, jnp.int32)
  fwd = jax.jit(setup.apply, compiler_options=compiler_options())
  table = hlo_op_table(fwd.lower(params, x, t).compile().as_text())
  report = {'config': _CONFIG.value, 'batch': B, 'sampling_call': summarize(
      _events(lambda: fwd(params, x, t), _REPEAT.value), _TOP.value, table)}

  mesh = training.make_mesh()
  step = training.make_train_step(setup, mesh)
  st = [training.replicate(state, mesh)]
  batch = training.shard_batch(data_lib.Batches(data_lib.load_embedded_mnist(), B, 0).batch(0), mesh)

  def train():
    st[0], m = step(st[0], batch)
    return m
  table = hlo_op_table(step.lower(st[0], batch).compile().as_text())
  report['train_step'] = summarize(_events(train, _REPEAT.value), _TOP.value, table)
  for name in ('sampling_call', 'train_step'):
    r = report[name]
    print(f'\n{name}: {r["traced_ms"] / _REPEAT.value:.1f} ms of traced ops per call')
    print('  by kind: ' + ', '.join(f'{k} {v}%' for k, v in r['by_kind'].items()))
    for op, pct in r['top_ops']:
      print(f'  {pct:5.1f}%  {op}')
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(report, f, indent=1)
    print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
