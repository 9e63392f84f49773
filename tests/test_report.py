"""Evaluation helpers: taking a padded or resized image back to 28×28."""

import numpy as np

from ddpm_jax.metrics.report import _mnist_like, to_28


def test_to_28_crops_padded_images_exactly_and_resizes_others():
  x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 1)).astype(np.float32)
  np.testing.assert_array_equal(to_28(x, 'pad'), x[:, 2:30, 2:30])
  r = to_28(x, 'bilinear')
  assert r.shape == (3, 28, 28, 1) and not np.allclose(r, x[:, 2:30, 2:30])
  y = x[:, :28, :28]
  assert to_28(y, 'pad') is y


def test_mnist_like_models():
  from ddpm_jax.config import base_config
  d = base_config().data
  assert _mnist_like(d)
  d.image_size = 32
  assert _mnist_like(d)
  d.image_size = 8
  assert not _mnist_like(d)
  d.image_size, d.channels = 32, 3
  assert not _mnist_like(d)
