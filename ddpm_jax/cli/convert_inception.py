"""Converts pytorch-fid's FID Inception weights to .npz, once (needs torch).

  python -m ddpm_jax.cli.convert_inception pt_inception-2015-12-05-6726825d.pth --out fid_inception.npz

The .npz keeps pytorch-fid's keys and torch layouts; evaluate reads it
without torch.
"""

from absl import flags

from ddpm_jax.cli import common

_SRC = flags.DEFINE_string('src', None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                           '(or pass it as the one argument).')
_OUT = flags.DEFINE_string('out', None, 'Output .npz path.', required=True)


def main() -> None:
  from ddpm_jax.errors import UserError
  from ddpm_jax.metrics.inception import convert_weights
  if not _SRC.value:
    raise UserError('name the .pth file: --src FILE.pth')
  n = convert_weights(_SRC.value, _OUT.value)
  print(f'wrote {_OUT.value} ({n} arrays)')


if __name__ == '__main__':
  common.run(main, positional='src')
