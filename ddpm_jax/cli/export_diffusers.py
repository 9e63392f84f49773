"""Exports a workdir's checkpoint as a diffusers UNet2DModel folder.

  python -m ddpm_jax.cli.export_diffusers --workdir W --out DIR [--checkpoint N] [--raw]
  ddpm-export-diffusers --workdir W --out DIR      (installed)

Writes DIR/config.json, DIR/diffusion_pytorch_model.safetensors (the EMA
weights unless --raw) and DIR/scheduler_config.json, which
diffusers.UNet2DModel.from_pretrained(DIR) and
DDPMScheduler.from_pretrained(DIR) load. A class-conditional model keeps
its null label as the last class row (num_class_embeds = classes + 1).
A model diffusers' UNet2DModel cannot represent (text, latent, patches) is
refused with one line.
"""

from absl import flags

from ddpm_jax.cli import common

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir.', required=True)
_OUT = flags.DEFINE_string('out', None, 'The folder to write.', required=True)
_CHECKPOINT = flags.DEFINE_integer('checkpoint', None, 'Step (default: latest).')
_RAW = flags.DEFINE_bool('raw', False, 'Export the raw weights, not the EMA.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace existing files in --out.')


def main() -> None:
  from ddpm_jax.diffusers_format import export_workdir
  paths = export_workdir(_WORKDIR.value, _OUT.value, _CHECKPOINT.value,
                         use_ema=not _RAW.value, overwrite=_OVERWRITE.value)
  print('wrote ' + ', '.join(paths))


def run() -> None:
  common.run(main, spellings={'overwrite=True': '--overwrite'})


if __name__ == '__main__':
  run()
