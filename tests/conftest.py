"""Tests run on 4 fake CPU devices; XLA_FLAGS must be set before JAX starts."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests (and the script subprocesses, which inherit this) compile the
# same tiny train step and sampler; a persistent cache compiles each once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_test_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_enable_x64', False)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_config():
  from ddpm_jax.config import load_config_file
  return load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))


_LONGEST_FIRST = ('test_soak', 'test_readme')


def pytest_collection_modifyitems(config, items):
  """The two longest files first (the pre-emption soak, then the README
  test): with two workers each overlaps the rest instead of running alone
  at the end."""
  def rank(item):
    return next((i for i, name in enumerate(_LONGEST_FIRST)
                 if name in item.nodeid), len(_LONGEST_FIRST))
  items.sort(key=rank)
