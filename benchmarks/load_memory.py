"""python -m benchmarks.load_memory --config configs/cifar10.py --workdir /tmp/memwd

Peak resident memory of `load()` + one sampling call, in a fresh process.
Writes a checkpoint at step 0 (random init, the whole train state, as the
trainer saves it) if the workdir has none, then measures in a new process:
the RSS after importing ddpm_jax, and the peak RSS after `load(workdir)` and
`pipe.sample(1, seed=0, sampler='ddim', num_steps=10)`, and prints them as
one JSON line (with the CPU, JAX version and date). In the new process
PYTHONPATH comes before the working directory on the path, so it may point
at another checkout, to measure its `load` on the same checkpoint.
"""

import json
import os
import subprocess
import sys

from absl import flags

from benchmarks import common

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir to load (a step-0 checkpoint '
                               'is written there if it has none).', required=True)
_CONFIG = flags.DEFINE_string('config', None, 'Config file of the step-0 checkpoint '
                              '(needed only when --workdir has no checkpoint).')

_MEASURE = r'''
import json, resource, sys
def rss_mb():
  with open('/proc/self/status') as f:
    return next(int(l.split()[1]) for l in f if l.startswith('VmRSS')) / 1024
import jax, ddpm_jax
from ddpm_jax import load
jax.numpy.zeros(1).block_until_ready()
base = rss_mb()
pipe = load(sys.argv[1])
after_load = rss_mb()
x = pipe.sample(num=1, seed=0, sampler='ddim', num_steps=10)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({'ddpm_jax': ddpm_jax.__file__, 'rss_after_import_mb': round(base),
                  'rss_after_load_mb': round(after_load), 'peak_rss_mb': round(peak),
                  'peak_minus_import_mb': round(peak - base)}))
'''


def write_checkpoint(config_path: str, workdir: str) -> None:
  from ddpm_jax import checkpoint, sharding
  from ddpm_jax.config import load_config_file
  from ddpm_jax.train import step as step_lib
  config = load_config_file(config_path)
  _, state = step_lib.init_train_state(config)
  ckpt = checkpoint.Checkpointer(workdir)
  ckpt.save(0, sharding.replicate(state, sharding.make_mesh()).to_saveable(),
            {'config': json.loads(config.to_json())})
  ckpt.wait()
  ckpt.close()


def main() -> None:
  workdir = _WORKDIR.value
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    if not _CONFIG.value:
      common.fail(f'{workdir} has no checkpoint: give --config to write one at step 0')
    write_checkpoint(_CONFIG.value, workdir)
  # -P: the working directory comes after PYTHONPATH on the path, not first.
  path = os.pathsep.join(filter(None, [os.environ.get('PYTHONPATH'), os.getcwd()]))
  r = subprocess.run([sys.executable, '-P', '-c', _MEASURE, workdir], capture_output=True,
                     text=True, check=True, env={**os.environ, 'PYTHONPATH': path})
  row = json.loads(r.stdout.strip().splitlines()[-1])
  print(json.dumps({**common.header(), **row}))


if __name__ == '__main__':
  common.run(main)
