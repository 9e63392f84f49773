"""python -m benchmarks.bench --config configs/mnist.py --batch 64 --steps 1000 [--out FILE]

Speed of sampling and training, JAX side by side with a PyTorch reference
(pip install -e '.[bench]': torch==2.13.0, CPU build, and diffusers).
Reports, in one invocation on one machine:
- sampling: compile time of the full scan (and of a 50-step scan), steady-state
  seconds after block_until_ready, image-steps/s, achieved GFLOP/s (XLA's
  cost analysis of one network call × steps) and % of a measured f32 matmul
  ceiling (a large matmul in the same run);
- training: steps/s and images/s of the jitted train step;
- the JAX side twice: with ddpm_jax's compile options (ddpm_jax.xla_options)
  and with XLA's defaults, so the effect of the options is measured too;
- with torch and diffusers installed: the same UNet shape as diffusers
  `UNet2DModel` (parameter counts checked to within 1%), sampled with a plain
  Python loop and trained with torch Adam, and the JAX/PyTorch ratios.
Prints a table and, with --out, writes it all as JSON (with the CPU, JAX
version and date).
"""

import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from ddpm_jax import data as data_lib, samplers, sharding, xla_options
from ddpm_jax.train import step as step_lib
from ddpm_jax.builders import betas_from_config
from ddpm_jax.config import load_config_file, validate
from ddpm_jax.sampling import make_sample_fn

_CONFIG = flags.DEFINE_string('config', 'configs/mnist.py', 'Config file.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Images per sampling call and train batch.')
_STEPS = flags.DEFINE_integer('steps', 1000, 'Sampling steps.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 20, 'Timed train steps.')
_TORCH = flags.DEFINE_bool('torch', True, 'Run the PyTorch reference if installed.')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Override model.dtype.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path.')
_COMPILE_STEPS = flags.DEFINE_multi_integer(
    'compile_steps', [1000], 'Also compile (not run) scans of these lengths.')


def matmul_ceiling_gflops(n=2048):
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  _, seconds = common.timed(f, a, repeats=5)
  return 2 * n ** 3 / np.mean(seconds) / 1e9


def jax_side(config, B, steps):
  out = {}
  setup, state = step_lib.init_train_state(config)
  params = jax.tree.map(lambda p: p + 0.01, state.ema_params)
  mesh = sharding.make_mesh()
  d = config.data
  shape = (B, d.image_size, d.image_size, d.channels)
  betas = betas_from_config(config)
  out['params'] = setup.num_params

  # FLOPs of one network call (a scan's cost analysis counts its body once).
  fwd = jax.jit(setup.apply).lower(params, jnp.zeros(shape), jnp.zeros((B,), jnp.int32)).compile()
  flops_call = float(fwd.cost_analysis()['flops'])
  out['gflop_per_call'] = flops_call / 1e9

  for n in sorted({steps, 50} | set(_COMPILE_STEPS.value)):  # compiled, one run
    fn = make_sample_fn(setup.apply, samplers.make_sampler('ddpm', betas, n), shape, mesh)
    t = time.perf_counter()
    compiled = fn.lower(params, jax.random.key(0)).compile()
    out[f'compile_s_{n}'] = time.perf_counter() - t
    if n == steps:  # already compiled: the first call is steady state
      _, (secs,) = common.timed(compiled, params, jax.random.key(1), warmup=False)
      out['sample_s'] = secs
      out['image_steps_per_s'] = B * steps / secs
      out['sample_gflops'] = flops_call * steps / secs / 1e9

  config.training.batch_size = B
  mesh = sharding.make_mesh()
  step = step_lib.make_train_step(setup, mesh)
  st = sharding.replicate(state, mesh)
  src = data_lib.load_embedded_mnist() if d.name == data_lib.EMBEDDED else None
  if src is None:
    images = np.zeros((B, d.image_size, d.image_size, d.channels), np.uint8)
    batch = {'image': images, 'label': np.zeros(B, np.int32)}
  else:
    batch = data_lib.Batches(src, B, 0).batch(0)
  gb = sharding.shard_batch(batch, mesh)
  st = [st]

  def train(_):
    st[0], m = step(st[0], gb)
    return m
  jax.block_until_ready(train(0))
  secs = common.loop_seconds(train, _TRAIN_STEPS.value)
  out['train_steps_per_s'] = 1 / secs
  out['train_images_per_s'] = B / secs
  return out


def torch_side(config, B, steps):
  import torch
  net = common.torch_unet(config)
  d = config.data
  out = {'params': sum(p.numel() for p in net.parameters())}
  betas = torch.tensor(betas_from_config(config), dtype=torch.float32)
  T = len(betas)
  ts = np.round(np.linspace(0, T - 1, steps)).astype(int)
  ab = torch.cumprod(1 - betas, 0)
  shape = (B, d.channels, d.image_size, d.image_size)

  @torch.no_grad()
  def sample(n):
    x = torch.randn(shape)
    abs_ = ab[ts]
    abs_prev = torch.cat([torch.ones(1), abs_[:-1]])
    for i in range(n - 1, -1, -1):
      t = torch.full((B,), int(ts[i]))
      eps = net(x, t).sample
      a, ap = abs_[i], abs_prev[i]
      beta = 1 - a / ap
      x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
      mean = (beta * ap.sqrt() / (1 - a)) * x0 + ((1 - ap) * (1 - beta).sqrt() / (1 - a)) * x
      x = mean + (beta.sqrt() * torch.randn_like(x) if i > 0 else 0)
    return x
  sample(2)
  t = time.perf_counter()
  sample(steps)
  secs = time.perf_counter() - t
  out['sample_s'] = secs
  out['image_steps_per_s'] = B * steps / secs

  net.train()
  opt = torch.optim.Adam(net.parameters(), lr=2e-4)
  x0 = torch.randn(shape)

  def train_step():
    t = torch.randint(0, T, (B,))
    noise = torch.randn_like(x0)
    a = ab[t].view(-1, 1, 1, 1)
    loss = ((net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample - noise) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
  train_step()
  t = time.perf_counter()
  for _ in range(_TRAIN_STEPS.value):
    train_step()
  secs = (time.perf_counter() - t) / _TRAIN_STEPS.value
  out['train_steps_per_s'] = 1 / secs
  out['train_images_per_s'] = B / secs
  return out


def main():
  config = load_config_file(_CONFIG.value)
  if _DTYPE.value:
    config.model.dtype = _DTYPE.value
  validate(config)
  B, steps = _BATCH.value, _STEPS.value
  report = {**common.header(), 'device': jax.devices()[0].device_kind,
            'config': _CONFIG.value,
            'batch': B, 'steps': steps, 'dtype': config.model.dtype}
  report['matmul_ceiling_gflops'] = matmul_ceiling_gflops()
  report['compiler_options'] = xla_options.compiler_options()
  report['jax'] = j = jax_side(config, B, steps)
  j['pct_of_ceiling'] = 100 * j['sample_gflops'] / report['matmul_ceiling_gflops']
  if report['compiler_options']:  # the same with XLA's defaults
    os.environ[xla_options.ENV_DEFAULTS] = '1'
    xla_options.compiler_options.cache_clear()
    report['jax_xla_defaults'] = jd = jax_side(config, B, steps)
    jd['pct_of_ceiling'] = 100 * jd['sample_gflops'] / report['matmul_ceiling_gflops']
    report['sample_speedup_options_over_defaults'] = j['image_steps_per_s'] / jd['image_steps_per_s']
    report['train_speedup_options_over_defaults'] = j['train_steps_per_s'] / jd['train_steps_per_s']
  rows = [('params', j['params'])]
  rows += [(f'compile s ({k[10:]}-step scan)', v) for k, v in sorted(j.items())
           if k.startswith('compile_s_')]
  rows += [
          ('sample s', j['sample_s']), ('image-steps/s', j['image_steps_per_s']),
          ('sampling GFLOP/s', j['sample_gflops']),
          ('% of f32 matmul ceiling', j['pct_of_ceiling']),
          ('train steps/s', j['train_steps_per_s']), ('train images/s', j['train_images_per_s'])]
  if _TORCH.value:
    try:
      report['torch'] = t = torch_side(config, B, steps)
    except ImportError as e:
      print(f'PyTorch reference skipped: {e} (pip install -e ".[bench]")')
    else:
      report['param_ratio'] = j['params'] / t['params']
      report['sample_speedup_jax_over_torch'] = j['image_steps_per_s'] / t['image_steps_per_s']
      report['train_speedup_jax_over_torch'] = j['train_steps_per_s'] / t['train_steps_per_s']
      if 'jax_xla_defaults' in report:
        report['sample_speedup_xla_defaults_over_torch'] = jd['image_steps_per_s'] / t['image_steps_per_s']
        report['train_speedup_xla_defaults_over_torch'] = jd['train_steps_per_s'] / t['train_steps_per_s']
  print(f"{report['cpu']} ({report['device']}); matmul ceiling {report['matmul_ceiling_gflops']:.0f} GFLOP/s")
  print(f"options: {report['compiler_options']}")
  print(f"{'':28s} {'JAX':>12s} {'JAX, XLA dflt':>14s} {'PyTorch':>12s}")
  keys = {'params': 'params', 'sample s': 'sample_s', 'image-steps/s': 'image_steps_per_s',
          'train steps/s': 'train_steps_per_s', 'train images/s': 'train_images_per_s',
          'sampling GFLOP/s': 'sample_gflops', '% of f32 matmul ceiling': 'pct_of_ceiling'}
  for name, v in rows:
    key = keys.get(name) or next((k for k in j if k.startswith('compile_s_') and
                                  name.startswith(f'compile s ({k[10:]}-')), None)
    cells = []
    for side, width in (('jax_xla_defaults', 14), ('torch', 12)):
      ref = report.get(side, {}).get(key) if key else None
      cells.append(f'{"" if ref is None else f"{ref:.2f}":>{width}s}')
    print(f'{name:28s} {v:12.2f} {cells[0]} {cells[1]}')
  for k in ('param_ratio', 'sample_speedup_jax_over_torch', 'train_speedup_jax_over_torch',
            'sample_speedup_xla_defaults_over_torch', 'train_speedup_xla_defaults_over_torch',
            'sample_speedup_options_over_defaults', 'train_speedup_options_over_defaults'):
    if k in report:
      print(f'{k}: {report[k]:.3f}')
  if _OUT.value:
    common.write_json(_OUT.value, report)


if __name__ == '__main__':
  common.run(main)
