"""Samples from a trained checkpoint.

  python sample.py --workdir DIR [--checkpoint STEP] --num 64 --seed 0 \
      --out samples.png [--gif] [--raw]

Writes a PNG grid, a .npy of the raw samples in [-1, 1] and, with --gif, an
animation of the reverse process. Uses the EMA weights unless --raw.
"""

from absl import flags

from ddpm_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir.', required=True)
_CHECKPOINT = flags.DEFINE_integer('checkpoint', None, 'Step (default: latest).')
_NUM = flags.DEFINE_integer('num', 64, 'Number of images.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed; same seed, same images.')
_OUT = flags.DEFINE_string('out', 'samples.png', 'PNG grid path.')
_GIF = flags.DEFINE_bool('gif', False, 'Also write an animation of the reverse process.')
_RAW = flags.DEFINE_bool('raw', False, 'Use the raw weights instead of the EMA.')
_SAMPLER = flags.DEFINE_string('sampler', None, 'Sampler (default: the config\'s).')
_STEPS = flags.DEFINE_integer('steps', None, 'Sampling steps (default: all T).')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  from ddpm_jax.generate import generate
  paths = generate(_WORKDIR.value, out=_OUT.value, num=_NUM.value,
                   seed=_SEED.value, checkpoint=_CHECKPOINT.value,
                   use_ema=not _RAW.value, gif=_GIF.value,
                   sampler=_SAMPLER.value, num_steps=_STEPS.value)
  print('wrote ' + ', '.join(paths.values()))


if __name__ == '__main__':
  cli.run(main)
