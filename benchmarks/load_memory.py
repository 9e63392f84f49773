"""Peak resident memory of `load()` + one sampling call, in a fresh process.

  python benchmarks/load_memory.py --config configs/cifar10.py --workdir /tmp/memwd

Writes a checkpoint at step 0 (random init, the whole train state, as the
trainer saves it) if the workdir has none, then measures in a new process:
the RSS after importing ddpm_jax, and the peak RSS after `load(workdir)` and
`pipe.sample(1, seed=0, sampler='ddim', num_steps=10)`. PYTHONPATH may point
at another checkout, to measure its `load` on the same checkpoint.
"""

import json
import os
import subprocess
import sys

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
  args = dict(a.lstrip('-').split('=', 1) for a in sys.argv[1:])
  workdir = args['workdir']
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    write_checkpoint(args['config'], workdir)
  r = subprocess.run([sys.executable, '-c', _MEASURE, workdir], capture_output=True,
                     text=True, check=True)
  print(r.stdout.strip().splitlines()[-1])


if __name__ == '__main__':
  main()
