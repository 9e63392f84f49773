"""python -m experiments.check_inception [--num 8 --size 32]

Cross-checks ddpm_jax.metrics.inception against pytorch-fid's own
InceptionV3 (pip install torch==2.13.0 pytorch-fid==0.3.0 torchvision; dev
only). The FID weights are not needed: both networks get the same generated
weights (random convs, BatchNorm statistics and fc) through pytorch-fid's
loading path, and must give the same pool3 features. Prints the largest
absolute and relative feature difference and both parameter counts, then
MATCH (exit 0) or MISMATCH (exit 1).
"""

import sys
import types

from absl import flags
import numpy as np

from benchmarks import common

_NUM = flags.DEFINE_integer('num', 8, 'Images.')
_SIZE = flags.DEFINE_integer('size', 32, 'Input size (resized to 299 by both).')


def random_weights(seed=0):
  from flax import nnx
  from ddpm_jax.metrics import inception
  rng = np.random.default_rng(seed)
  sd = inception.export_state_dict(inception.InceptionV3(rngs=nnx.Rngs(seed)))
  for k, v in sd.items():  # make the BatchNorm do something
    if k.endswith('running_mean'):
      sd[k] = rng.normal(0, 0.1, v.shape).astype(np.float32)
    elif k.endswith('running_var'):
      sd[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    elif k.endswith('bn.weight'):
      sd[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    elif k.endswith('bn.bias'):
      sd[k] = rng.normal(0, 0.1, v.shape).astype(np.float32)
  sd['fc.weight'] = rng.normal(0, 0.01, (1008, 2048)).astype(np.float32)
  sd['fc.bias'] = np.zeros(1008, np.float32)
  return sd


def main():
  # torchvision's compiled ops may not match a CPU torch build; the models
  # are pure Python, so skip the op registrations.
  sys.modules.setdefault('torchvision._meta_registrations', types.ModuleType('stub'))
  import torch
  from pytorch_fid import inception as pf
  from ddpm_jax.metrics import inception

  sd = random_weights()
  pf.load_state_dict_from_url = lambda *a, **k: {k2: torch.from_numpy(v) for k2, v in sd.items()}
  ref = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  ours = inception.load_state_dict(inception.InceptionV3(rngs=__import__('flax').nnx.Rngs(1)), sd)
  feats = inception.make_feature_fn(ours)

  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (_NUM.value, _SIZE.value, _SIZE.value, 3), dtype=np.uint8)
  with torch.no_grad():
    r = ref(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)[0]
  r = r.reshape(len(x), -1).numpy().astype(np.float64)
  o = feats(x)
  n_ref = sum(p.numel() for p in ref.parameters()) + sum(
      b.numel() for n, b in ref.named_buffers() if 'num_batches' not in n)
  n_ours = sum(v.size for v in inception.export_state_dict(ours).values())
  diff = np.abs(o - r).max()
  rel = diff / np.abs(r).max()
  print(f'pytorch-fid pool3 arrays (no fc): {n_ref:,}; ddpm_jax: {n_ours:,}')
  print(f'features {o.shape}: max |diff| {diff:.3g}, relative to max |feature| {rel:.3g}')
  ok = n_ref == n_ours and rel < 1e-4
  print('MATCH' if ok else 'MISMATCH')
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  common.run(main)
