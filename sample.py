"""Samples from a trained checkpoint: `python sample.py --help`. The command is
ddpm_jax/cli/sample.py."""

from ddpm_jax.cli import sample

if __name__ == '__main__':
  sample.run()
