"""python -m benchmarks.input_pipeline --out docs/input_pipeline_cpu.json

How fast the folder input pipeline feeds the train step, on this machine:

1. Images/s of `BatchIterator` over a folder of JPEGs of mixed sizes (drawn
   here: --images files, sides 200-600 pixels), decoded, resized and
   centre-cropped to 64x64 and to 256x256, with 0, 1 and 2 worker processes
   (batches of --batch; the first batch is not timed).
2. The rate the train step consumes: steps/s x batch of configs/folder.py
   (32x32 RGB) on an in-memory batch, and the paper's TPU v3-8 rate for
   comparison (21 steps/s x 128 = 2,688 images/s).
3. A training run of configs/folder.py on examples/shapes read from the
   folder (data.workers 2), against the same run reading the same images
   decoded once into memory: steps/s over the last --train_steps/2 steps of
   each.

Run it on an otherwise idle machine: the pipeline and the step share the CPU.
"""

import json
import os
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from benchmarks import common

_IMAGES = flags.DEFINE_integer('images', 256, 'JPEGs in the drawn folder.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Images per batch.')
_BATCHES = flags.DEFINE_integer('batches', 12, 'Timed batches per setting.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 300, 'Steps of each training run.')
_OUT = flags.DEFINE_string('out', None, 'JSON report path.')


def _draw_folder(root: str, n: int) -> None:
  rng = np.random.default_rng(0)
  for i in range(n):
    w, h = (int(v) for v in rng.integers(200, 601, 2))
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    img.save(os.path.join(root, f'{i:04d}.jpg'), quality=90)


def _pipeline_rate(folder: str, size: int, workers: int) -> float:
  from ddpm_jax.data import Batches
  from ddpm_jax.image_folder import FolderSource
  from ddpm_jax.input_pipeline import BatchIterator
  src = FolderSource(folder, size, 3)
  batches = Batches(src, _BATCH.value, seed=0)
  with BatchIterator(batches, 0, _BATCHES.value + 1, workers) as it:
    next(it)                       # start-up: workers, the first decode
    t = time.perf_counter()
    for _ in range(_BATCHES.value):
      next(it)
    seconds = time.perf_counter() - t
  return _BATCHES.value * _BATCH.value / seconds


def _step_rate(config) -> float:
  import jax
  from ddpm_jax import sharding
  from ddpm_jax.train import step as step_lib
  setup, state = step_lib.init_train_state(config)
  mesh = sharding.make_mesh()
  state = sharding.replicate(state, mesh)
  step = step_lib.make_train_step(setup, mesh)
  B, S = config.training.batch_size, config.data.image_size
  batch = sharding.shard_batch({'image': np.zeros((B, S, S, 3), np.uint8),
                                'label': np.zeros((B,), np.int32)}, mesh)
  for _ in range(2):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  n = 20
  t = time.perf_counter()
  for _ in range(n):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  return n / (time.perf_counter() - t)


def _train_rate(config, workdir: str, source=None) -> float:
  """steps/s over the second half of a run (after compiling)."""
  from ddpm_jax import data as data_lib
  from ddpm_jax.train.loop import train
  real = data_lib.load_source
  if source is not None:
    data_lib.load_source = lambda *a, **k: source
  try:
    train(config, workdir, progress=False)
  finally:
    data_lib.load_source = real
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  half = [r for r in rows if r['step'] > config.training.num_steps // 2]
  return (half[-1]['step'] - half[0]['step']) / (half[-1]['time'] - half[0]['time'])


def main() -> None:
  from ddpm_jax.config import load_config_file
  from ddpm_jax.data import ArraySource
  from ddpm_jax.image_folder import FolderSource
  report = {**common.header(), 'batch': _BATCH.value, 'images': _IMAGES.value}
  with tempfile.TemporaryDirectory() as tmp:
    folder = os.path.join(tmp, 'jpegs')
    os.makedirs(folder)
    _draw_folder(folder, _IMAGES.value)
    rates = {}
    for size in (64, 256):
      for workers in (0, 1, 2):
        rates[f'{size}px_{workers}_workers'] = _pipeline_rate(folder, size, workers)
        print(f'{size}x{size}, {workers} workers: '
              f'{rates[f"{size}px_{workers}_workers"]:.0f} images/s', flush=True)
    report['pipeline_images_per_s'] = rates

    config = load_config_file('configs/folder.py')
    config.data.folder = 'examples/shapes'
    steps_per_s = _step_rate(config)
    report['train_step'] = {'config': 'configs/folder.py', 'steps_per_s': steps_per_s,
                            'images_per_s': steps_per_s * config.training.batch_size}
    report['tpu_v3_8_paper_images_per_s'] = 21 * 128
    print(f'train step (configs/folder.py, batch {config.training.batch_size}): '
          f'{steps_per_s:.2f} steps/s = '
          f'{steps_per_s * config.training.batch_size:.0f} images/s', flush=True)

    config.training.num_steps = _TRAIN_STEPS.value
    config.training.log_every = 10
    config.training.checkpoint_every = 10 ** 6
    config.training.num_sample_images = 0
    from_folder = _train_rate(config, os.path.join(tmp, 'wd_folder'))
    src = FolderSource('examples/shapes', 32, 3)
    images, labels = src.read(np.arange(len(src)))
    in_memory = _train_rate(config, os.path.join(tmp, 'wd_memory'),
                            ArraySource(images, labels))
    report['training_steps_per_s'] = {'folder_2_workers': from_folder,
                                      'in_memory': in_memory,
                                      'ratio': from_folder / in_memory}
    print(f'training from the folder: {from_folder:.2f} steps/s; in memory: '
          f'{in_memory:.2f} steps/s; ratio {from_folder / in_memory:.3f}')
  print(json.dumps(report))
  if _OUT.value:
    common.write_json(_OUT.value, report)


if __name__ == '__main__':
  common.run(main)
