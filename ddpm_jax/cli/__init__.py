"""The commands: the only modules that define flags. Each parses its flags
and calls one plain function of the library.

  python -m ddpm_jax.cli.train              (= python train.py)
  python -m ddpm_jax.cli.sample             (= python sample.py)
  python -m ddpm_jax.cli.evaluate
  python -m ddpm_jax.cli.convert_inception
  python -m ddpm_jax.cli.count_params
"""
