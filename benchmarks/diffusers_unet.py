"""python -m benchmarks.diffusers_unet --batch 8 --steps 10 --out docs/diffusers_unet_cpu.json

The imported CIFAR-10 architecture (google/ddpm-cifar10-32's UNet2DModel:
35,746,307 parameters) sampled by ddpm_jax and by diffusers, side by side in
one run, with the same random weights. Needs torch and diffusers (the bench
extra). It builds the UNet2DModel with random weights in diffusers, saves it
as a diffusers folder, imports it with ddpm_jax's importer, checks that both
give the same ε, then times `--steps` DDIM steps (η = 0) of `--batch` images
from the same noise: ddpm_jax's jitted scan (compiled ahead, not timed)
against diffusers' UNet2DModel + DDIMScheduler loop under torch.no_grad.
Reports image-steps/s of each and the ratio, with the CPU, JAX version and
date. Run it on an otherwise idle machine.
"""

import os
import tempfile
import time

from absl import flags
import jax
import numpy as np

from benchmarks import common

_BATCH = flags.DEFINE_integer('batch', 8, 'Images per sampling call.')
_STEPS = flags.DEFINE_integer('steps', 10, 'DDIM steps.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed runs of each (the best is kept).')
_OUT = flags.DEFINE_string('out', None, 'JSON report to write.')

CIFAR10_UNET = dict(  # google/ddpm-cifar10-32's config.json (the UNet fields)
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2, down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    norm_num_groups=32, norm_eps=1e-6, attention_head_dim=None, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, act_fn='silu')
CIFAR10_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule='linear', beta_start=1e-4,
                         beta_end=0.02, variance_type='fixed_large', clip_sample=False)


def main() -> None:
  import torch
  from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
  from ddpm_jax import diffusers_format
  from ddpm_jax.pipeline import load
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = UNet2DModel(**CIFAR10_UNET).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.02)
  n_params = sum(p.numel() for p in model.parameters())
  tmp = tempfile.mkdtemp(prefix='diffusers_unet_')
  src, wd = os.path.join(tmp, 'model'), os.path.join(tmp, 'wd')
  model.save_pretrained(src, safe_serialization=True)
  DDPMScheduler(**CIFAR10_SCHEDULER).save_pretrained(src)
  diffusers_format.import_folder(src, wd)
  pipe = load(wd)

  B, S = _BATCH.value, _STEPS.value
  rng = np.random.default_rng(0)
  x_t = rng.standard_normal((B, 32, 32, 3)).astype(np.float32)
  t = np.full((B,), 500)
  ours = pipe.predict_noise(x_t, t)
  with torch.no_grad():
    theirs = model(torch.from_numpy(x_t.transpose(0, 3, 1, 2).copy()),
                   torch.from_numpy(t)).sample.numpy().transpose(0, 2, 3, 1)
  parity = float(np.abs(ours - theirs).max() / np.abs(theirs).max())

  noise = rng.standard_normal((B, 32, 32, 3)).astype(np.float32)
  req = pipe.request(B, 0, sampler='ddim', num_steps=S, eta=0.0, clip_x0=False,
                     spacing='leading', noise=noise, batch_size=B)
  fn = pipe._sample_fn(req.fn_args, B)
  args = (pipe.params, jax.random.key(0), None, None, None, None, None, req.noise)
  compiled = fn.lower(*args).compile()
  jax_s = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    x_jax, _ = compiled(*args)
    jax.block_until_ready(x_jax)
    jax_s.append(time.perf_counter() - t0)

  ddim = DDIMScheduler.from_config(DDPMScheduler(**CIFAR10_SCHEDULER).config)
  ddim.set_timesteps(S)
  torch_s = []
  for _ in range(_REPEATS.value + 1):   # the first run warms up
    sample = torch.from_numpy(noise.transpose(0, 3, 1, 2).copy())
    t0 = time.perf_counter()
    with torch.no_grad():
      for step_t in ddim.timesteps:
        out = model(sample, step_t).sample
        sample = ddim.step(out, step_t, sample, eta=0.0).prev_sample
    torch_s.append(time.perf_counter() - t0)
  torch_s = torch_s[1:]
  x_torch = sample.numpy().transpose(0, 2, 3, 1)
  same = float(np.abs(np.asarray(x_jax) - x_torch).max())
  jax_rate, torch_rate = B * S / min(jax_s), B * S / min(torch_s)
  report = {**common.header(), 'params': n_params, 'batch': B, 'ddim_steps': S,
            'eps_max_rel_diff': parity, 'final_images_max_abs_diff': same,
            'ddpm_jax_seconds': min(jax_s), 'diffusers_seconds': min(torch_s),
            'ddpm_jax_image_steps_per_s': jax_rate,
            'diffusers_image_steps_per_s': torch_rate,
            'ratio_ddpm_jax_over_diffusers': jax_rate / torch_rate,
            'torch_threads': torch.get_num_threads(), 'torch_version': torch.__version__}
  for k, v in report.items():
    print(f'{k}: {v}')
  if _OUT.value:
    common.write_json(_OUT.value, report)


if __name__ == '__main__':
  common.run(main)
