"""What the scripts in benchmarks/ and experiments/ share.

- `run(main)`: absl flag parsing under the project's error rule (a user
  mistake is one `error:` line and exit status 2, as ddpm_jax/cli's commands),
  with `--help` printing the script's docstring and its flags (exit 0);
  `fail(message)` for a mistake found later;
- `cpu_name()` and `header()`: the fields every report carries (cpu, JAX
  version, date);
- `timed()` and `loop_seconds()`: wall time after `block_until_ready`;
- `write_json()` and `append_jsonl()`: the reports;
- `SAMPLER_RUNS` / `parse_runs()`: the sampler settings the sampler scripts
  sweep;
- `torch_unet(config)`: the PyTorch reference UNet of bench and profile_ops.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Callable

from absl import flags

HELP_FLAGS = ('-h', '--help', '-help', '--helpshort', '--helpfull')

# (sampler, σ spacing): every sampler with its model spacing, and Karras
# spacing for dpm++2m and euler.
SAMPLER_RUNS = [('ddpm', None), ('ddim', None), ('dpm++2m', None), ('dpm++2m', 'karras'),
                ('euler', None), ('euler', 'karras'), ('euler_a', None), ('heun', None),
                ('dpm2', None)]


def run(main: Callable[[], object]) -> None:
  """Parses the flags, then calls `main()` under ddpm_jax's error rule."""
  if any(a in HELP_FLAGS for a in sys.argv[1:]):
    print_help()
    sys.exit(0)
  from ddpm_jax.cli import common as cli
  cli.run(main)


def fail(message: str) -> None:
  """A user mistake: one `error:` line on stderr, exit status 2."""
  from ddpm_jax.cli import common as cli
  cli.fail(message)


def print_help() -> None:
  """The script's docstring, then its flags."""
  main = sys.modules['__main__']
  print((main.__doc__ or '').strip() + '\n')
  text = flags.FLAGS.module_help(sys.argv[0])
  print('flags:\n' + text if text else 'flags: none')


def is_int_list(values: list[str]) -> bool:
  """A flag validator: every item of a list flag is an integer."""
  try:
    [int(v) for v in values or []]
  except ValueError:
    return False
  return True


def is_float_list(values: list[str]) -> bool:
  """A flag validator: every item of a list flag is a number."""
  try:
    [float(v) for v in values or []]
  except ValueError:
    return False
  return True


def parse_runs(text: str | None) -> list[tuple[str, str | None]]:
  """'sampler[:spacing],...' -> [(sampler, spacing or None)]; None or '' ->
  SAMPLER_RUNS."""
  if not text:
    return list(SAMPLER_RUNS)
  return [tuple(r.split(':', 1)) if ':' in r else (r, None)
          for r in text.split(',') if r]


def cpu_name() -> str:
  """'<model name>, <n> cores, AVX-512' (or 'no AVX-512': speed differs about
  3x), from /proc/cpuinfo; platform.processor() where there is none."""
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    info = ''
  model = next((l.split(':', 1)[1].strip() for l in info.splitlines()
                if l.startswith('model name')), None)
  model = model or platform.processor() or platform.machine()
  name = f'{model}, {os.cpu_count()} cores'
  if info:
    name += ', AVX-512' if 'avx512f' in info else ', no AVX-512'
  return name


def header() -> dict[str, str]:
  """The fields every report and JSON line carries: cpu, jax_version, date."""
  import jax
  return {'cpu': cpu_name(), 'jax_version': jax.__version__,
          'date': time.strftime('%Y-%m-%d')}


def timed(fn: Callable[..., Any], *args, repeats: int = 1,
          warmup: bool = True) -> tuple[Any, list[float]]:
  """Calls `fn(*args)` once untimed (it compiles) when `warmup`, then
  `repeats` times, each timed until `jax.block_until_ready` returns.
  Returns (the last output, the seconds of each timed call)."""
  import jax
  if warmup:
    jax.block_until_ready(fn(*args))
  out, seconds = None, []
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    seconds.append(time.perf_counter() - t)
  return out, seconds


def loop_seconds(step: Callable[[int], Any], n: int, start: int = 0) -> float:
  """Seconds per call of `step(i)` for i in start .. start+n-1, dispatched
  back to back and blocked on the last output only (a loop's throughput:
  dispatch overlaps compute). Warm `step` up first."""
  import jax
  out = None
  t = time.perf_counter()
  for i in range(start, start + n):
    out = step(i)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON and says so."""
  with open(path, 'w') as f:
    json.dump(obj, f, indent=1)
  print(f'wrote {path}')


def append_jsonl(path: str, row: dict) -> None:
  """Appends `row` as one JSON line."""
  with open(path, 'a') as f:
    f.write(json.dumps(row) + '\n')


def torch_unet(config):
  """diffusers UNet2DModel with the config's UNet shape (eval mode)."""
  import torch
  from diffusers import UNet2DModel
  torch.set_num_threads(os.cpu_count())
  m, d = config.model, config.data
  res, down = d.image_size, []
  for level in range(len(m.ch_mult)):
    attn = res in tuple(m.attn_resolutions)
    down.append('AttnDownBlock2D' if attn else 'DownBlock2D')
    res //= 2 if level < len(m.ch_mult) - 1 else 1
  up = [b.replace('Down', 'Up') for b in reversed(down)]
  return UNet2DModel(
      sample_size=d.image_size, in_channels=d.channels, out_channels=d.channels,
      block_out_channels=tuple(m.ch * k for k in m.ch_mult),
      layers_per_block=m.num_res_blocks, down_block_types=tuple(down),
      up_block_types=tuple(up), norm_num_groups=m.num_groups, norm_eps=1e-6,
      attention_head_dim=None, dropout=m.dropout, act_fn='silu',
      freq_shift=1, flip_sin_to_cos=False).eval()
