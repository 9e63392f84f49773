import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ddpm_jax import data as data_lib


def test_embedded_mnist():
  src = data_lib.load_embedded_mnist()
  assert len(src) == 5000
  imgs, labels = src.read(np.arange(0, 5000, 500))
  assert imgs.shape == (10, 28, 28, 1) and imgs.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.arange(10))  # 500 per class, sorted
  assert imgs.max() == 255


def test_the_split_without_the_judges_held_out_digits():
  from ddpm_jax import config as config_lib
  c = config_lib.base_config()
  full = data_lib.load_source(c.data)
  c.data.split = 'train_minus_heldout'
  config_lib.validate(c)
  fit = data_lib.load_source(c.data)
  train, held = data_lib.held_out_split(full.labels)
  assert len(fit) == 4000 and len(held) == 1000
  imgs, _ = fit.read(np.arange(4000))
  held_imgs, _ = full.read(held)
  # no held-out image is among the training ones
  seen = {im.tobytes() for im in imgs}
  assert not any(im.tobytes() in seen for im in held_imgs)
  c.data.split = 'test'
  with pytest.raises(config_lib.ConfigError, match='data.split'):
    config_lib.validate(c)


def test_batches_are_a_function_of_the_step_and_cover_each_epoch():
  src = data_lib.ArraySource(np.arange(10, dtype=np.uint8).reshape(10, 1, 1), np.arange(10))
  b = data_lib.Batches(src, 4, seed=3)
  again = data_lib.Batches(src, 4, seed=3)
  np.testing.assert_array_equal(b.indices(7), again.indices(7))
  epoch0 = np.concatenate([b.indices(0), b.indices(1), b.indices(2)[:2]])
  assert sorted(epoch0) == list(range(10))
  assert not np.array_equal(b.indices(0), data_lib.Batches(src, 4, seed=4).indices(0))


def test_process_slices_make_up_the_global_batch():
  src = data_lib.ArraySource(np.zeros((50, 2, 2), np.uint8), np.arange(50))
  full = data_lib.Batches(src, 8, seed=0)
  parts = [data_lib.Batches(src, 8, seed=0, process_index=i, process_count=2)
           for i in range(2)]
  for step in (0, 5, 13):
    np.testing.assert_array_equal(
        np.concatenate([p.indices(step) for p in parts]), full.indices(step))


def test_preprocess_scales_resizes_and_flips():
  img = np.zeros((2, 4, 4, 1), np.uint8)
  img[:, :, 0] = 255
  x = data_lib.preprocess(jnp.asarray(img), 4, False, None)
  assert float(x.min()) == -1.0 and float(x.max()) == 1.0
  assert data_lib.preprocess(jnp.asarray(img), 8, False, None).shape == (2, 8, 8, 1)
  flipped = [np.asarray(data_lib.preprocess(jnp.asarray(img), 4, True, jax.random.key(k)))
             for k in range(8)]
  assert any(f[0, 0, -1, 0] == 1.0 for f in flipped)
  assert any(f[0, 0, 0, 0] == 1.0 for f in flipped)
  np.testing.assert_array_equal(data_lib.to_uint8(x), img)


def _cfg(name, data_dir=None):
  return ml_collections.ConfigDict({'name': name, 'split': 'train', 'data_dir': data_dir})


def test_tfds_source_with_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12):
    src = data_lib.load_source(_cfg('mnist'))
    assert len(src) == 12
    imgs, labels = src.read(np.array([0, 5, 11]))
  assert imgs.shape == (3, 28, 28, 1) and imgs.dtype == np.uint8
  assert labels.shape == (3,) and labels.dtype == np.int32


def test_unprepared_tfds_dataset_gives_one_clear_line(tmp_path):
  with pytest.raises(data_lib.DataError) as e:
    data_lib.load_source(_cfg('cifar10', str(tmp_path)))
  msg = str(e.value)
  assert '\n' not in msg and "'cifar10'" in msg and 'download_and_prepare' in msg


def test_pad_centres_the_image_on_black_and_never_resamples():
  img = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
  x = np.asarray(data_lib.preprocess(jnp.asarray(img), 32, False, None, 'pad'))
  assert x.shape == (2, 32, 32, 1)
  unpadded = np.asarray(data_lib.preprocess(jnp.asarray(img), 28, False, None))
  np.testing.assert_array_equal(x[:, 2:30, 2:30], unpadded)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert np.all(x[:, border] == -1.0)
