"""Tests run on 4 fake CPU devices; XLA_FLAGS must be set before JAX starts."""

import os

# The tests' models are tiny: compiling, not running, is most of their time.
# LLVM's optimisation level 0 compiles about 40% faster here (XLA's own HLO
# passes still run); the script subprocesses inherit it.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4'
                           ' --xla_backend_optimization_level=0').strip()
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
assert jax.device_count() == 4   # the CPU backend starts here, with 4 devices
# The script subprocesses (train.py, sample.py, the soak) get one device:
# their tests check what a script does, not the sharding, and on 4 fake
# devices a tiny train.py took 29.5 s of CPU against 23.4 s on one. Their
# XLA_FLAGS are read when they start; this process already has its 4.
os.environ['XLA_FLAGS'] = os.environ['XLA_FLAGS'].replace(
    '--xla_force_host_platform_device_count=4',
    '--xla_force_host_platform_device_count=1')
FOUR_DEVICES_ENV = dict(os.environ, XLA_FLAGS=os.environ['XLA_FLAGS'].replace(
    'device_count=1', 'device_count=4'))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_config():
  from ddpm_jax.config import load_config_file
  return load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))


def zero_one_classifier(images_N88, labels_N):
  """A logistic-regression 0-vs-1 classifier of real 8x8 images in [-1, 1]
  (the trained-model tests' judge): checked on its training images, it
  returns classify(x_N88C) -> 0/1 per image."""
  import numpy as np
  x = images_N88.reshape(len(images_N88), -1)
  w, b = np.zeros(x.shape[1]), 0.0
  for _ in range(300):
    p = 1 / (1 + np.exp(-(x @ w + b)))
    w -= 0.1 * x.T @ (p - labels_N) / len(labels_N)
    b -= 0.1 * float(np.mean(p - labels_N))
  assert np.mean((x @ w + b > 0) == labels_N) > 0.97
  return lambda s: (s.reshape(len(s), -1) @ w + b > 0).astype(int)


_LONGEST_FIRST = ('test_soak', 'test_readme', 'test_stable_diffusion',
                  'test_object_store', 'test_train_loop', 'test_text')


def pytest_collection_modifyitems(config, items):
  """The longest files first (the pre-emption soak, the README test, the
  object store, the train loop, text): with two workers each overlaps the
  rest instead of running alone at the end."""
  def rank(item):
    return next((i for i, name in enumerate(_LONGEST_FIRST)
                 if name in item.nodeid), len(_LONGEST_FIRST))
  items.sort(key=rank)


def train_steps(config, steps: int, source=None, on_step=None):
  """The jitted train step run `steps` times on `source` (default: the
  embedded MNIST-5k) in batches of config.training.batch_size, waiting for
  each step as the trainer does (300 steps queued at once on 4 fake CPU
  devices aborted XLA). Returns (setup, state, mesh); `on_step(i, metrics)`
  sees every step's metrics."""
  from ddpm_jax import data as data_lib, sharding
  from ddpm_jax.train import step as step_lib
  setup, state = step_lib.init_train_state(config)
  mesh = sharding.make_mesh()
  state = sharding.replicate(state, mesh)
  step = step_lib.make_train_step(setup, mesh)
  batches = data_lib.Batches(source or data_lib.load_embedded_mnist(),
                             config.training.batch_size, seed=0)
  for i in range(steps):
    state, metrics = step(state, sharding.shard_batch(batches.batch(i), mesh))
    jax.block_until_ready(metrics)
    if on_step is not None:
      on_step(i, metrics)
  return setup, state, mesh


def train_zero_one(config, steps: int):
  """A model trained `steps` steps on the 0s and 1s of MNIST-5k at 8x8 (the
  trained-model tests of guidance and text prompts), as a Pipeline over its
  EMA weights, and a 0-vs-1 classifier of real images (`zero_one_classifier`)."""
  import jax.numpy as jnp
  import numpy as np
  from ddpm_jax import data as data_lib
  from ddpm_jax.pipeline import Pipeline
  src = data_lib.load_embedded_mnist()
  keep = src.labels < 2
  images, labels = src.images[keep], src.labels[keep]
  setup, state, mesh = train_steps(config, steps,
                                   data_lib.ArraySource(images, labels))
  classify = zero_one_classifier(np.asarray(data_lib.preprocess(
      jnp.asarray(images), 8, False, None)), labels)
  return Pipeline(config, setup.eps_apply, state.ema_params, mesh, steps), classify


def untrained_pipeline(config, params_fn, wrap=None):
  """A Pipeline over fresh parameters changed by `params_fn` (so the output
  is not trivial), with its ε-apply optionally wrapped (e.g. in
  chex.assert_max_traces)."""
  import dataclasses
  from ddpm_jax import sharding
  from ddpm_jax.pipeline import Pipeline
  from ddpm_jax.train import step as step_lib
  setup, state = step_lib.init_train_state(config)
  if wrap:
    setup = dataclasses.replace(setup, eps_apply=wrap(setup.eps_apply))
  return Pipeline(config, setup.eps_apply, params_fn(state.ema_params),
                  sharding.make_mesh(), 0)
