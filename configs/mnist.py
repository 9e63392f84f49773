"""The default: unconditional DDPM on the embedded MNIST-5k subset (28×28).

Run (CPU friendly; the same as `python train.py` with no flags):
  python train.py --config configs/mnist.py --workdir workdirs/mnist

UNet ch 32, mult (1, 2, 2), 2 blocks, attention at 14×14: 1,623,169 params.
1000 steps at batch 32 with Adam 2e-3 (100 warm-up steps), no dropout,
EMA 0.995. Expected result, as measured on a 2-core CPU (README, "Measured"): 547 s
for train.py (450 s for the steps, then about 97 s for the final DDPM grid), final
loss 0.0404 (mean of steps 951-1000: 0.0316), about half of the 36 grid images are
recognisable digits, FD 82 (floor 9) with dpm++2m at 20 steps.
"""

from ddpm_jax.config import base_config


def get_config():
  return base_config()
