"""Parameter count of each config, without allocating any parameter.

  python -m ddpm_jax.cli.count_params configs/*.py
"""

from absl import flags

from ddpm_jax.cli import common

_PATHS = flags.DEFINE_multi_string('path', [], 'Config file (repeatable); '
                                   'positional paths work too.')


def main(paths: list[str]) -> None:
  import jax
  from ddpm_jax.config import load_config_file, model_from_config
  from flax import nnx
  for path in paths:
    model = nnx.eval_shape(lambda: model_from_config(load_config_file(path)))
    n = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f'{path}: {n:,} parameters')


if __name__ == '__main__':
  common.run(lambda: main(_PATHS.value), positional='path')
