"""The default: class-conditional DDPM on the embedded MNIST-5k (28×28),
sized to give legible digits in a few CPU minutes.

Run (the same as `python train.py` with no flags):
  python train.py --config configs/mnist.py --workdir workdirs/mnist
  python sample.py --workdir workdirs/mnist --out samples.png

Against the paper's recipe at MNIST size (configs/mnist_paper.py) it has:
- a narrower, shallower UNet: ch 16, mult (1, 2, 4), 1 block per level,
  attention at 7×7 only (687,473 params; 3.1× the images/s);
- v-prediction (Salimans & Ho, 2022) instead of ε;
- class labels with classifier-free guidance (label dropout 0.1); samples
  and grids use every class in turn at guidance scale 1.5;
- DPM-Solver++(2M) at 20 steps for grids and `sample.py`.
Still the paper's: the linear β schedule over T = 1000, the unweighted MSE
(of v), Adam 2e-3 with warm-up, clipping, EMA 0.995, batch 32. How these
choices compare at equal training time (`python -m experiments.recipes`):
docs/results/quality.md.

Measured on a 2-core Intel Xeon with AVX-512, 2026-11-21
(docs/results/quality.md): README command 1 in a fresh clone took 4 min 35 s
in all, install included (train.py 218 s; mean loss over steps 751-800:
0.164). Then `python -m ddpm_jax.cli.evaluate --workdir workdirs/mnist --num 1000`:
LeNet FD 20.4 (real-vs-real floor 9.1), confident share 0.916 (held-out real
images 0.940), class entropy 3.319 bits, 93.6% in the requested class.
"""

from ddpm_jax.config import base_config


def get_config():
  c = base_config()
  c.model.ch = 16
  c.model.num_groups = 4
  c.model.ch_mult = (1, 2, 4)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (7,)
  c.model.class_conditional = True
  c.diffusion.prediction = 'v'
  c.training.num_steps = 800
  c.training.checkpoint_every = 200
  c.training.label_dropout = 0.1
  c.training.num_sample_images = 40   # 4 per digit, one row per digit
  c.sampling.sampler = 'dpm++2m'
  c.sampling.num_steps = 20
  c.sampling.guidance_scale = 1.5
  return c
