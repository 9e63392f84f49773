"""The API's argument checks, and the image and mask contract."""

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import checks
from ddpm_jax.errors import UserError


@pytest.mark.parametrize('value', [2.5, '2', None, True, [1]])
def test_integer_refuses_other_types(value):
  with pytest.raises(UserError, match=r'^num must be an integer >= 1, got'):
    checks.integer('num', value, low=1)


def test_integer_accepts_numpy_and_checks_the_range():
  assert checks.integer('num', np.int64(3), low=1) == 3
  assert checks.integer('seed', 2 ** 80) == 2 ** 80
  with pytest.raises(UserError, match=r'num must be an integer >= 1, got 0$'):
    checks.integer('num', 0, low=1)
  assert checks.integer('step', None, optional=True) is None


@pytest.mark.parametrize('value', ['0.5', None, float('nan'), float('inf'), 1.5])
def test_number_refuses_strings_non_finite_and_out_of_range(value):
  with pytest.raises(UserError, match=r'^strength must be a (finite )?number in \[0, 1\]'):
    checks.number('strength', value, low=0, high=1)


def test_choice_boolean_and_path():
  assert checks.choice('sampler', 'ddim', ('ddpm', 'ddim')) == 'ddim'
  with pytest.raises(UserError, match=r"sampler must be one of \['ddpm', 'ddim'\], got 3"):
    checks.choice('sampler', 3, ('ddpm', 'ddim'))
  with pytest.raises(UserError, match='clip_x0 must be True or False'):
    checks.boolean('clip_x0', 'no')
  with pytest.raises(UserError, match=r'workdir must be a path .* got None'):
    checks.path('workdir', None)


def test_uint8_and_pil_images_are_taken_to_minus_one_one():
  u8 = np.array([[0, 255], [127, 128]], np.uint8)
  x = checks.image('init_image', u8, channels=1)
  assert x.shape == (2, 2, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x[..., 0], u8 / 127.5 - 1.0, atol=1e-6)
  pil = Image.fromarray(u8)
  np.testing.assert_array_equal(checks.image('init_image', pil, channels=1), x)
  rgb = checks.image('init_image', pil, channels=3)      # converted to the model's mode
  assert rgb.shape == (2, 2, 3)


def test_float_images_outside_minus_one_one_are_refused_with_the_range():
  with pytest.raises(UserError, match=r'init_image must lie in \[-1, 1\].*\[0, 255\]'):
    checks.image('init_image', np.array([[0.0, 255.0]]), channels=1)
  with pytest.raises(UserError, match='non-finite'):
    checks.image('init_image', np.full((2, 2), np.nan), channels=1)
  with pytest.raises(UserError, match=r'shape \[H, W\].*got shape \(4,\)'):
    checks.image('init_image', np.zeros(4), channels=1)
  with pytest.raises(UserError, match='must be an image'):
    checks.image('init_image', 'digit.png', channels=1)


def test_masks_uint8_bool_and_float():
  m = checks.mask('mask', np.array([[0, 255]], np.uint8))
  np.testing.assert_array_equal(m[..., 0], [[0.0, 1.0]])
  np.testing.assert_array_equal(checks.mask('mask', np.array([[True, False]]))[..., 0],
                                [[1.0, 0.0]])
  with pytest.raises(UserError, match=r'mask must lie in \[0, 1\].*\[-1, 0\]'):
    checks.mask('mask', np.array([[-1.0, 0.0]]))


def test_a_uint8_mask_of_zeros_and_ones_is_refused_as_ambiguous():
  with pytest.raises(UserError, match='uint8 with values 0 and 1'):
    checks.mask('mask', np.array([[0, 1]], np.uint8))
