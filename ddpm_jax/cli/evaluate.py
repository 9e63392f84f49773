"""Sample quality of a trained model: LeNet FD (MNIST), Inception FID, bits/dim.

  python -m ddpm_jax.cli.evaluate --workdir DIR --num 1000 [--sampler dpm++2m --steps 20]
      [--bpd_images 64] [--inception_weights fid_inception.npz --ref_stats S.npz]

Prints the report and writes it to <workdir>/eval_<step>.json; what it holds
is listed in ddpm_jax/metrics/report.py. Installed, the same command is
`ddpm-evaluate`.
"""

import json

from absl import flags

from ddpm_jax import options
from ddpm_jax.cli import common

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir.', required=True)
_NUM = flags.DEFINE_integer('num', 1000, 'Number of generated samples.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_SAMPLER = flags.DEFINE_enum('sampler', None, options.SAMPLERS,
                             "Sampler (default: the config's).")
_STEPS = flags.DEFINE_integer('steps', None, "Sampling steps (default: the config's).")
_BATCH = flags.DEFINE_integer('batch', None, 'Images per sampling call '
                              '(default: by model size, at most 256).')
_CHECKPOINT = flags.DEFINE_integer('checkpoint', None, 'Step (default: latest).')
_GUIDANCE = flags.DEFINE_float('guidance-scale', None, 'Class- or text-conditional '
                               'models: guidance weight (labels cycle 0-9; text: '
                               'held-out prompts naming 0-9).')
_LANGUAGE = flags.DEFINE_enum('language', 'en', options.LANGUAGES, 'Text models: the '
                              'language of the held-out prompts.')
_INCEPTION = flags.DEFINE_string('inception_weights', None, 'FID Inception weights '
                                 '(.npz or .pth; see ddpm_jax/metrics/inception.py).')
_REF_STATS = flags.DEFINE_string('ref_stats', None, 'FID statistics (.npz mu, sigma) '
                                 'of the training split; computed and saved here if '
                                 'missing (default <workdir>/eval/fid_stats_<data>_<size>.npz).')
_REF_NUM = flags.DEFINE_integer('ref_images', None, 'Training images for new FID '
                                'statistics (default: the whole split).')
_BPD = flags.DEFINE_integer('bpd_images', 0, 'Held-out images for bits/dim (0: skip); '
                            'costs T network calls per batch.')


def main() -> None:
  from ddpm_jax.metrics.report import evaluate  # after flag parsing: fast --help
  common.report_backend()
  result, path = evaluate(
      _WORKDIR.value, num=_NUM.value, seed=_SEED.value, sampler=_SAMPLER.value,
      num_steps=_STEPS.value, batch=_BATCH.value, checkpoint=_CHECKPOINT.value,
      guidance_scale=_GUIDANCE.value, inception_weights=_INCEPTION.value,
      ref_stats=_REF_STATS.value, ref_images=_REF_NUM.value,
      bpd_images=_BPD.value, language=_LANGUAGE.value)
  print(json.dumps(result))
  print(f'wrote {path}')


# The library's argument names, as this command's flags.
SPELLINGS = {'num': '--num', 'seed': '--seed', 'bpd_images': '--bpd_images', 'num_steps': '--steps',
             'inception_weights': '--inception_weights', 'batch_size': '--batch',
             'guidance_scale': '--guidance-scale'}

def run() -> None:
  common.run(main, spellings=SPELLINGS)


if __name__ == '__main__':
  run()
