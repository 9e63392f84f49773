"""The base config, saved configs and the *_from_config factories."""

import jax.numpy as jnp
import numpy as np

from ddpm_jax import builders
from ddpm_jax import config as config_lib
from ddpm_jax import diffusion


def test_a_config_saved_before_a_field_existed_gets_its_old_behaviour():
  saved = config_lib.base_config().to_dict()
  del saved['diffusion']['prediction'], saved['diffusion']['loss_weighting']
  saved['model']['ch'] = 48
  c = config_lib.config_from_dict(saved)
  assert c.diffusion.prediction == 'eps' and c.diffusion.loss_weighting == 'none'
  assert c.model.ch == 48


def test_eps_apply_and_loss_follow_the_prediction_target():
  c = config_lib.base_config()
  c.diffusion.num_timesteps = 10
  raw = lambda params, x, t: x * params
  assert builders.eps_apply_from_config(c, raw) is raw   # ε: unchanged
  c.diffusion.prediction = 'v'
  s = builders.schedule_from_config(c)
  x, t = jnp.ones((2, 4, 4, 1)), jnp.array([0, 9])
  np.testing.assert_allclose(
      builders.eps_apply_from_config(c, raw)(0.5, x, t),
      diffusion.eps_from_prediction(s, 'v', x * 0.5, x, t))
  c.diffusion.loss_weighting = 'min_snr'
  loss = builders.loss_from_config(c)
  assert np.isfinite(float(loss(lambda x, t: x, x, __import__('jax').random.key(0))))


def test_every_shipped_config_validates():
  from ddpm_jax.cli.common import shipped_configs
  paths = sorted(shipped_configs().values())
  assert len(paths) >= 12
  for path in paths:
    c = config_lib.load_config_file(path)
    config_lib.validate(c)
    if config_lib.model_kind(c).latent:   # the UNet sees the declared autoencoder's latent
      f = config_lib.autoencoder_factor(c.autoencoder)
      assert config_lib.unet_input_shape(c) == (
          c.data.image_size // f, c.data.image_size // f, c.autoencoder.z_channels)


def test_seed_and_folder_captions_are_checked(tiny_config):
  import pytest
  c = tiny_config
  c.seed = -1
  with pytest.raises(config_lib.ConfigError, match='seed must be an integer >= 0'):
    config_lib.validate(c)
  c.seed = 0
  c.data.name, c.data.folder = 'folder', '/x'
  c.model.text_conditional, c.model.cross_attn_resolutions = True, (4,)
  with pytest.raises(config_lib.ConfigError, match="data.captions='folder' goes with"):
    config_lib.validate(c)


def test_editing_defaults_are_checked(tiny_config):
  import pytest
  for value in (-1.0, float('nan'), float('inf')):
    tiny_config.sampling.edit_reconstruction = value
    with pytest.raises(config_lib.ConfigError,
                       match='^sampling.edit_reconstruction (must be a finite|is (nan|inf))'):
      config_lib.validate(tiny_config)
  tiny_config.sampling.edit_reconstruction = 0.0
  config_lib.validate(tiny_config)
  saved = config_lib.config_from_dict({'sampling': {'edit_infer_label': 'yes'}})
  with pytest.raises(config_lib.ConfigError,
                     match='^sampling.edit_infer_label must be True or False'):
    config_lib.validate(saved)
  assert config_lib.config_from_dict({}).sampling.edit_infer_label is True
