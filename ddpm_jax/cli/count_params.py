"""Parameter count of each config, without allocating any parameter.

  python -m ddpm_jax.cli.count_params configs/*.py
"""

from absl import flags

from ddpm_jax.cli import common

_PATHS = flags.DEFINE_multi_string('path', [], 'Config file (repeatable); '
                                   'positional paths work too.')


def main(paths: list[str]) -> None:
  from ddpm_jax.builders import abstract_model
  from ddpm_jax.config import load_config_file
  from ddpm_jax.models.layers import count_params
  for path in paths:
    _, params = abstract_model(load_config_file(path))
    print(f'{path}: {count_params(params):,} parameters')


if __name__ == '__main__':
  common.run(lambda: main(_PATHS.value), positional='path')
