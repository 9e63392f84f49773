"""python -m benchmarks.profile_ops --config configs/mnist.py --batch 64 [--out docs/profile_cpu_mnist.json]

Where the time goes: a per-op profile of one sampling call and one train step.
Traces the jitted network call (what every sampler step runs) and the jitted
train step with jax.profiler, then sums the host-thread events of XLA's
thunks by what they compute (convolution, dot, reduce, elementwise, layout
copies) and by op name, and prints the top ops with their share of the traced
time, next to the wall time per call. With torch and diffusers installed it
also prints torch.profiler's view of the PyTorch reference of
benchmarks.bench. Convolutions that XLA runs with its own Eigen kernels emit
no events; they are the gap between the two. Also times GroupNorm + SiLU,
nnx.GroupNorm against ddpm_jax's. With --out, writes it all as JSON (with
the CPU, JAX version and date).
"""

import collections
import glob
import os
import re
import tempfile

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from ddpm_jax import data as data_lib, sharding
from ddpm_jax.train import step as step_lib
from ddpm_jax.config import load_config_file, validate
from ddpm_jax.xla_options import compiler_options

_CONFIG = flags.DEFINE_string('config', 'configs/mnist.py', 'Config file.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch.')
_REPEAT = flags.DEFINE_integer('repeat', 5, 'Traced calls of each.')
_TOP = flags.DEFINE_integer('top', 15, 'Ops to print.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')
_TORCH = flags.DEFINE_bool('torch', True, 'Also profile the PyTorch reference if installed.')


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
      elif opcode == 'fusion' and ('transpose' in name or 'copy' in name):
        table[name] = 'layout-copy ' + shape  # transposes around convolutions
      elif opcode == 'fusion':
        table[name] = 'elementwise ' + shape
      else:
        table[name] = f'{opcode} {shape}'
  return table


def _wall_ms(fn, repeat):
  """Median ms per call, compiled and warm."""
  _, seconds = common.timed(fn, repeats=repeat)
  return 1000 * float(np.median(seconds))


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


def groupnorm_ab(shape=(64, 28, 28, 64), groups=32, repeat=20):
  """ms per call of nnx.GroupNorm and ddpm_jax's GroupNorm (+ SiLU), forward
  and forward+backward, side by side."""
  from flax import nnx
  from ddpm_jax.models.layers import GroupNorm
  x = jax.random.normal(jax.random.key(0), shape)
  out = {}
  for name, cls in (('nnx.GroupNorm', nnx.GroupNorm), ('ddpm_jax GroupNorm', GroupNorm)):
    g, st = nnx.split(cls(shape[-1], groups, epsilon=1e-6, rngs=nnx.Rngs(0)))
    f = lambda x, st=st, g=g: jax.nn.silu(nnx.merge(g, st)(x))
    fb = lambda x, f=f: jax.grad(lambda x: (f(x) * x).sum())(x)
    out[name] = {k: _wall_ms(lambda fn=jax.jit(fn): fn(x), repeat)
                 for k, fn in (('fwd_ms', f), ('fwd_bwd_ms', fb))}
  return out


def torch_profile(config, B, repeat, top):
  """torch.profiler's self-time shares for the diffusers reference (the model
  of benchmarks.bench): a no-grad forward and a forward+backward."""
  import torch
  from torch.profiler import ProfilerActivity, profile
  net = common.torch_unet(config)
  d = config.data
  x = torch.randn(B, d.channels, d.image_size, d.image_size)
  t = torch.full((B,), 500)

  def shares(fn):
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
      for _ in range(repeat):
        fn()
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(v for _, v in rows) or 1
    return [(k, round(100 * v / total, 1)) for k, v in sorted(rows, key=lambda r: -r[1])[:top]]
  with torch.no_grad():
    fwd = shares(lambda: net(x, t))
  net.train()
  train = shares(lambda: (net(x, t).sample ** 2).mean().backward())
  return {'forward': fwd, 'forward_backward': train}


def main():
  config = load_config_file(_CONFIG.value)
  config.training.batch_size = _BATCH.value
  validate(config)
  B, d = _BATCH.value, config.data
  setup, state = step_lib.init_train_state(config)
  params = jax.tree.map(lambda p: p + 0.01, state.ema_params)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, d.image_size, d.image_size, d.channels)),
                  jnp.float32)
  t = jnp.full((B,), 500, jnp.int32)
  fwd = jax.jit(setup.apply, compiler_options=compiler_options())
  table = hlo_op_table(fwd.lower(params, x, t).compile().as_text())
  call = lambda: fwd(params, x, t)
  report = {**common.header(), 'config': _CONFIG.value, 'batch': B,
            'compiler_options': compiler_options(),
            'sampling_call': summarize(_events(call, _REPEAT.value), _TOP.value, table)}
  report['sampling_call']['wall_ms'] = _wall_ms(call, _REPEAT.value)

  mesh = sharding.make_mesh()
  step = step_lib.make_train_step(setup, mesh)
  st = [sharding.replicate(state, mesh)]
  batch = sharding.shard_batch(data_lib.Batches(data_lib.load_embedded_mnist(), B, 0).batch(0), mesh)

  def train():
    st[0], m = step(st[0], batch)
    return m
  table = hlo_op_table(step.lower(st[0], batch).compile().as_text())
  report['train_step'] = summarize(_events(train, _REPEAT.value), _TOP.value, table)
  report['train_step']['wall_ms'] = _wall_ms(train, _REPEAT.value)
  for name in ('sampling_call', 'train_step'):
    r = report[name]
    print(f'\n{name}: {r["wall_ms"]:.1f} ms wall per call; {r["traced_ms"] / _REPEAT.value:.1f} ms '
          'of traced op time (summed over threads; XLA\'s own Eigen convolutions '
          'are not traced)')
    print('  by kind: ' + ', '.join(f'{k} {v}%' for k, v in r['by_kind'].items()))
    for op, pct in r['top_ops']:
      print(f'  {pct:5.1f}%  {op}')
  report['groupnorm_64x28x28x64'] = gn = groupnorm_ab()
  print('\nGroupNorm + SiLU on 64x28x28x64 (ms, jitted, compiled outside the timing):')
  for name, r in gn.items():
    print(f'  {name:20s} forward {r["fwd_ms"]:.2f}  forward+backward {r["fwd_bwd_ms"]:.2f}')
  if _TORCH.value:
    try:
      report['torch'] = tp = torch_profile(config, B, _REPEAT.value, 6)
    except ImportError as e:
      print(f'PyTorch profile skipped: {e}')
    else:
      for name, rows in tp.items():
        print(f'\nPyTorch reference, {name}: ' + ', '.join(f'{k} {v}%' for k, v in rows))
  if _OUT.value:
    common.write_json(_OUT.value, report)


if __name__ == '__main__':
  common.run(main)
