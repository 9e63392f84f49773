"""Imports a diffusers UNet2DModel (the paper's published DDPM weights, a
fine-tuned DDPM) as a workdir.

  python -m ddpm_jax.cli.import_diffusers SRC --workdir W [--config NAME_OR_FILE]
  ddpm-import-diffusers SRC --workdir W            (installed)

SRC is a UNet2DModel folder (config.json, diffusion_pytorch_model.safetensors,
optionally scheduler_config.json) or a pipeline folder (model_index.json,
unet/, scheduler/), e.g. a local copy of google/ddpm-cifar10-32. W then holds
one checkpoint (step 0) that load(W), sample.py, evaluate and train.py
(fine-tuning) take. A Stable Diffusion 1.x/2.x pipeline folder
(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) is
imported the same way (ddpm_jax/stable_diffusion.py). --config gives the data and training settings of later
fine-tuning (its model section is replaced by the imported one).
"""

from absl import flags

from ddpm_jax import options
from ddpm_jax.cli import common
from ddpm_jax.errors import UserError

_SRC = flags.DEFINE_string('src', None, 'The diffusers folder.', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The new workdir.', required=True)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', options.DTYPES,
                           'Stable Diffusion: store and run the weights in '
                           'this type (bfloat16: half the memory).')
_CONFIG = flags.DEFINE_string('config', None, 'Data and training settings for '
                              'fine-tuning: a config file or a shipped name.')


def main() -> None:
  from ddpm_jax.config import load_config_file
  from ddpm_jax.diffusers_format import import_folder
  from ddpm_jax import stable_diffusion
  if stable_diffusion.is_sd_folder(_SRC.value):
    if _CONFIG.value:
      raise UserError('--config is for fine-tuning a UNet2DModel; a Stable '
                      'Diffusion pipeline is imported as it is')
    step, config = stable_diffusion.import_pipeline(_SRC.value, _WORKDIR.value,
                                                    _DTYPE.value)
    sd = stable_diffusion.configs_of(config)
    print(f'imported {_SRC.value} ({sd["pipeline"]}) into {_WORKDIR.value} '
          f'(checkpoint {step}): {config.data.image_size}x'
          f'{config.data.image_size} images, {config.diffusion.prediction}-'
          f'prediction, UNet in_channels {sd["unet"].get("in_channels", 4)}')
    print(f'next: python sample.py --workdir {_WORKDIR.value} --prompt "..." '
          '--out samples.png')
    return
  base = load_config_file(_CONFIG.value) if _CONFIG.value else None
  step, config = import_folder(_SRC.value, _WORKDIR.value, base)
  m = config.model
  print(f'imported {_SRC.value} into {_WORKDIR.value} (checkpoint {step}): '
        f'{config.data.image_size}x{config.data.image_size}x{config.data.channels}, '
        f'ch {m.ch}, ch_mult {tuple(m.ch_mult)}, attention at {tuple(m.attn_resolutions)}, '
        f'{config.diffusion.schedule} schedule over T={config.diffusion.num_timesteps}, '
        f'{config.diffusion.prediction}-prediction')
  print(f'next: python sample.py --workdir {_WORKDIR.value} --out samples.png')


def run() -> None:
  common.run(main, positional='src')


if __name__ == '__main__':
  run()
