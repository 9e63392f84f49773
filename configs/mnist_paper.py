"""The paper's recipe at MNIST size: the default before issue 14.

Run:
  python train.py --config configs/mnist_paper.py --workdir workdirs/mnist_paper

Unconditional ε-prediction, L_simple, linear β over T = 1000, DDPM sampling
over all 1000 steps (as `configs/cifar10.py`, which is the paper's exact
CIFAR-10 setting). UNet ch 32, mult (1, 2, 2), 2 blocks, attention at 14×14:
1,623,169 params. 1000 steps at batch 32, Adam 2e-3, EMA 0.995.
Measured (README, "The first ten minutes"): at equal wall-clock time it is
the worst recipe of the table; the README's figures of earlier rounds
(FD 82 after 1000 steps) come from it.
"""

from ddpm_jax.config import base_config


def get_config():
  return base_config()
