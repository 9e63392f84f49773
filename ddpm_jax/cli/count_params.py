"""Parameter count of each config, without allocating any parameter.

  python -m ddpm_jax.cli.count_params              (every shipped config)
  python -m ddpm_jax.cli.count_params configs/cifar10.py mnist ...
"""

from absl import flags

from ddpm_jax.cli import common

_PATHS = flags.DEFINE_multi_string('path', [], 'Config file or shipped config '
                                   'name (repeatable); positional ones work too.')


def main(paths: list[str]) -> None:
  from ddpm_jax.builders import abstract_model
  from ddpm_jax.config import load_config_file
  from ddpm_jax.models.layers import count_params
  shipped = common.shipped_configs()
  for path in paths or sorted(shipped.values()):
    path = shipped.get(path, path)
    _, params = abstract_model(load_config_file(path))
    print(f'{path}: {count_params(params):,} parameters')


if __name__ == '__main__':
  common.run(lambda: main(_PATHS.value), positional='path')
