"""Tests run on 4 fake CPU devices; XLA_FLAGS must be set before JAX starts."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_enable_x64', False)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_config():
  from ddpm_jax.config import load_config_file
  return load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))
