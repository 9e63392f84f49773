"""python -m benchmarks.sd_pipeline [--fixture sd1] [--size 64] [--batch 4] [--steps 25] [--out FILE]

Seconds per image of a Stable Diffusion pipeline, ddpm_jax against diffusers,
side by side in one run on one machine: the tiny random pipeline of
tests/fixtures/sd (imported into a temporary workdir), text-to-image at
--size x --size with a prompt and a negative prompt, guidance 7.5,
DPM++ 2M Karras. ddpm_jax: the first call (compile included) and the mean
of three later calls after block_until_ready; diffusers (needs torch,
diffusers and transformers: pip install -e '.[bench]'): the same pipeline
folder, DPMSolverMultistepScheduler(use_karras_sigmas=True), torch's CPU
threads = the machine's cores, one warm-up call then the mean of three.
Prints a table and, with --out, writes JSON with the CPU, JAX version and
date.
"""

import os
import tempfile
import time

from absl import flags
import numpy as np

from benchmarks import common

_FIXTURE = flags.DEFINE_string('fixture', 'sd1', 'tests/fixtures/sd/<name>.')
_SIZE = flags.DEFINE_integer('size', 64, 'Image height and width.')
_BATCH = flags.DEFINE_integer('batch', 4, 'Images per call.')
_STEPS = flags.DEFINE_integer('steps', 25, 'Sampling steps.')
_OUT = flags.DEFINE_string('out', None, 'JSON file to write.')

PROMPT, NEGATIVE = 'a photo of a red cat on a mat', 'blurry, low quality'


def ours(folder: str) -> dict:
  from ddpm_jax import load, stable_diffusion
  with tempfile.TemporaryDirectory() as tmp:
    wd = os.path.join(tmp, 'wd')
    stable_diffusion.import_pipeline(folder, wd)
    pipe = load(wd)
    kw = dict(num=_BATCH.value, prompt=PROMPT, negative_prompt=NEGATIVE,
              guidance_scale=7.5, sampler='dpm++2m', spacing='karras',
              num_steps=_STEPS.value, height=_SIZE.value, width=_SIZE.value,
              batch_size=_BATCH.value)
    t0 = time.perf_counter()
    pipe.sample(seed=0, **kw)
    first = time.perf_counter() - t0
    times = []
    for seed in (1, 2, 3):
      t0 = time.perf_counter()
      pipe.sample(seed=seed, **kw)
      times.append(time.perf_counter() - t0)
  return {'first_call_s': first, 'call_s': float(np.mean(times)),
          's_per_image': float(np.mean(times)) / _BATCH.value}


def theirs(folder: str) -> dict | None:
  try:
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                 safety_checker=None)
  pipe.scheduler = DPMSolverMultistepScheduler.from_config(
      pipe.scheduler.config, use_karras_sigmas=True)
  pipe.set_progress_bar_config(disable=True)
  kw = dict(prompt=[PROMPT] * _BATCH.value,
            negative_prompt=[NEGATIVE] * _BATCH.value, guidance_scale=7.5,
            num_inference_steps=_STEPS.value, height=_SIZE.value,
            width=_SIZE.value, output_type='np')
  with torch.inference_mode():
    pipe(**kw, generator=torch.Generator().manual_seed(0))
    times = []
    for seed in (1, 2, 3):
      t0 = time.perf_counter()
      pipe(**kw, generator=torch.Generator().manual_seed(seed))
      times.append(time.perf_counter() - t0)
  return {'call_s': float(np.mean(times)),
          's_per_image': float(np.mean(times)) / _BATCH.value,
          'torch': torch.__version__}


def main() -> None:
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))), 'tests', 'fixtures', 'sd', _FIXTURE.value)
  if not os.path.isdir(folder):
    common.fail(f'{folder} does not exist')
  row = dict(common.header(), fixture=_FIXTURE.value, size=_SIZE.value,
             batch=_BATCH.value, steps=_STEPS.value, sampler='dpm++2m karras')
  row['ddpm_jax'] = ours(folder)
  row['diffusers'] = theirs(folder)
  print(f"ddpm_jax: first call {row['ddpm_jax']['first_call_s']:.2f} s, then "
        f"{row['ddpm_jax']['s_per_image']:.4f} s/image")
  if row['diffusers']:
    ratio = row['diffusers']['s_per_image'] / row['ddpm_jax']['s_per_image']
    row['speedup'] = ratio
    print(f"diffusers: {row['diffusers']['s_per_image']:.4f} s/image; "
          f'ddpm_jax is {ratio:.2f}x as fast')
  if _OUT.value:
    common.write_json(_OUT.value, row)


if __name__ == '__main__':
  common.run(main)
