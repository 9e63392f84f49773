"""The paper's recipe at MNIST size.

Run:
  python train.py --config configs/mnist_paper.py --workdir workdirs/mnist_paper

Unconditional ε-prediction, L_simple, linear β over T = 1000, DDPM sampling
over all 1000 steps (as `configs/cifar10.py`, which is the paper's exact
CIFAR-10 setting). UNet ch 32, mult (1, 2, 2), 2 blocks, attention at 14×14:
1,623,169 params. 1000 steps at batch 32, Adam 2e-3, EMA 0.995.

Measured on a 2-core AMD EPYC, 2026-11-21 (docs/results/quality.md): 1000
steps in 450 s; `python -m ddpm_jax.cli.evaluate --workdir workdirs/mnist_paper
--num 1000 --sampler dpm++2m --steps 20 --bpd_images 64`: LeNet FD 82.4
(floor 9.1), 2.57 bits/dim. At equal wall-clock time (150 s; 2-core Intel
Xeon with AVX-512, 2026-11-21; `python -m experiments.recipes --budget 150
--recipes base`) it is the weakest recipe of the comparison in that page
(LeNet FD 282.2). Its UNet is the workload of the speed benchmarks
(docs/results/speed.md).
"""

from ddpm_jax.config import base_config


def get_config():
  return base_config()
