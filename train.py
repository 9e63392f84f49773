"""Trains a DDPM: `python train.py --help`. The command is ddpm_jax/cli/train.py."""

from ddpm_jax.cli import train

if __name__ == '__main__':
  train.run()
