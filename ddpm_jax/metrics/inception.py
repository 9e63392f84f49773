"""Inception-v3 pool3 features for FID, in Flax NNX.

The network is the FID variant of Inception-v3 (the TF 2015-12-05 graph as
ported by pytorch-fid): average pools that exclude padding, and a max pool in
the last block's pool branch. Images in [-1, 1] are resized bilinearly to
299×299 (as pytorch-fid does, no antialiasing) and mapped to 2048 features.

Weights are never downloaded. Supply pytorch-fid's file
`pt_inception-2015-12-05-6726825d.pth`, either as is (needs torch to read) or
converted once to `.npz` with the same keys and torch layouts:

  python -m ddpm_jax.cli.convert_inception pt_inception-2015-12-05-6726825d.pth --out fid_inception.npz

Keys are `<block>.<branch>.conv.weight` (O, I, kh, kw) and
`<block>.<branch>.bn.{weight,bias,running_mean,running_var}`; `fc.*` and
`num_batches_tracked` are ignored.
"""

from __future__ import annotations

import os
import pickle
import types
import zipfile
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ddpm_jax.errors import UserError
from ddpm_jax import files
from ddpm_jax.files import atomic_write

FID_INPUT_SIZE = 299
FID_CLASSES = 1008  # the FID graph's fc; torchvision's ImageNet weights have 1000


class BasicConv(nnx.Module):
  """conv (no bias) → BatchNorm (eps 1e-3, running statistics) → ReLU."""

  def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, *,
               rngs: nnx.Rngs):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    self.conv = nnx.Conv(cin, cout, (kh, kw), strides=stride,
                         padding=((ph, ph), (pw, pw)), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True,
                            rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool3(x):
  """3×3, stride 1, padding 1, padded zeros not counted."""
  return nnx.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool3(x, stride=2):
  pad = 'VALID' if stride == 2 else ((1, 1), (1, 1))
  return nnx.max_pool(x, (3, 3), (stride, stride), pad)


class InceptionA(nnx.Module):
  def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_avg_pool3(x))], axis=-1)


class InceptionB(nnx.Module):
  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        _max_pool3(x)], axis=-1)


class InceptionC(nnx.Module):
  def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      d = layer(d)
    return jnp.concatenate([self.branch1x1(x), b7, d,
                            self.branch_pool(_avg_pool3(x))], axis=-1)


class InceptionD(nnx.Module):
  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b7 = x
    for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                  self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7,
                            _max_pool3(x)], axis=-1)


class InceptionE(nnx.Module):
  """`max_pool=False`: FIDInceptionE_1 (average pool); True: E_2."""

  def __init__(self, cin: int, max_pool: bool, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)
    self.max_pool = max_pool

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = _max_pool3(x, stride=1) if self.max_pool else _avg_pool3(x)
    return jnp.concatenate([
        self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
        self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
  """x_BHWC in [-1, 1] (1 or 3 channels, any size ≥ 1) → pool3 [B, 2048]."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
    self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array,
               size: int = FID_INPUT_SIZE) -> jax.Array:
    x = jnp.asarray(x_BHWC, jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    B, _, _, C = x.shape
    x = jax.image.resize(x, (B, size, size, C), 'bilinear', antialias=False)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool3(x)
    x = _max_pool3(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                  self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                  self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return x.mean(axis=(1, 2))


# --- weights in pytorch-fid's state_dict layout ------------------------------

_BN_NAMES = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean',
             'running_var': 'var'}


def _torch_key(path: tuple) -> str:
  *mods, layer, leaf = map(str, path)
  if layer == 'conv':
    return '.'.join([*mods, 'conv', 'weight'])
  inv = {v: k for k, v in _BN_NAMES.items()}
  return '.'.join([*mods, 'bn', inv[leaf]])


def _is_conv(path: tuple) -> bool:
  return str(path[-2]) == 'conv'


def _torch_shape(path: tuple, shape: tuple[int, ...]) -> tuple[int, ...]:
  """HWIO → OIHW for conv kernels; BatchNorm vectors are unchanged."""
  return (shape[3], shape[2], shape[0], shape[1]) if _is_conv(path) else tuple(shape)


def _to_torch(path: tuple, value: np.ndarray) -> np.ndarray:
  return value.transpose(3, 2, 0, 1) if _is_conv(path) else value


def _from_torch(path: tuple, value: np.ndarray) -> np.ndarray:
  return value.transpose(2, 3, 1, 0) if _is_conv(path) else value


def export_state_dict(model: InceptionV3) -> dict[str, np.ndarray]:
  """The model's arrays under pytorch-fid's keys and torch layouts."""
  return {_torch_key(p): _to_torch(p, np.asarray(v.get_value()))
          for p, v in nnx.to_flat_state(nnx.state(model))}


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """pytorch-fid key → torch-layout shape, without building the weights."""
  abstract = _abstract_model()
  return {_torch_key(p): _torch_shape(p, v.get_value().shape)
          for p, v in nnx.to_flat_state(nnx.state(abstract))}


def _read_weights(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise UserError(f'Inception weights file {path} does not exist; see '
                    '`python -m ddpm_jax.cli.convert_inception --help` for the file it expects')
  if path.endswith('.npz'):
    try:
      with np.load(path) as f:
        return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # not an .npz
      raise UserError(f'cannot read Inception weights {path}: {e}') from e
  try:
    import torch
  except ImportError:
    raise UserError(f'{path} is not .npz; reading a .pth needs torch, or convert '
                    'it once elsewhere with `python -m ddpm_jax.cli.convert_inception '
                    'FILE.pth --out FILE.npz`') from None
  try:
    sd = torch.load(path, map_location='cpu', weights_only=True)
  except (OSError, RuntimeError, pickle.UnpicklingError) as e:  # not a torch file
    raise UserError(f'cannot read Inception weights {path}: {e}') from e
  return {k: v.numpy() for k, v in sd.items()}


def load_state_dict(model: InceptionV3, weights: dict[str, np.ndarray],
                    source: str = 'weights') -> InceptionV3:
  """Fills `model` from pytorch-fid keys; every array must be present with
  its exact shape."""
  fc = weights.get('fc.weight')
  if fc is not None and fc.shape[0] != FID_CLASSES:
    raise UserError(f'{source} has a {fc.shape[0]}-class fc layer: these are not '
                    f'the FID Inception weights (pt_inception-2015-12-05, '
                    f'{FID_CLASSES} classes); FIDs from them are not comparable')
  state = nnx.state(model)
  flat = []
  for p, v in nnx.to_flat_state(state):
    key = _torch_key(p)
    if key not in weights:
      raise UserError(f'{source} lacks {key}; is it pytorch-fid\'s FID Inception file?')
    arr = _from_torch(p, np.asarray(weights[key], np.float32))
    if arr.shape != v.get_value().shape:
      raise UserError(f'{source}: {key} has shape {np.shape(weights[key])}, the '
                      f'FID Inception expects {_torch_shape(p, v.get_value().shape)}')
    flat.append((p, jnp.asarray(arr)))
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def _abstract_model() -> InceptionV3:
  """The module with shapes only: random init of 94 convs would cost ~15 s."""
  return nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))


def load_fid_inception(path: str) -> InceptionV3:
  return load_state_dict(_abstract_model(), _read_weights(path), source=path)


def make_feature_fn(model: InceptionV3, size: int = FID_INPUT_SIZE
                    ) -> Callable[[np.ndarray], np.ndarray]:
  """A jitted pure function: images [-1, 1] or uint8 → float64 features."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def features(state, x_BHWC):
    return nnx.merge(graphdef, state)(x_BHWC, size)

  def fn(images_BHWC: np.ndarray) -> np.ndarray:
    x = np.asarray(images_BHWC)
    if x.dtype == np.uint8:
      x = x.astype(np.float32) / 127.5 - 1.0
    return np.asarray(features(state, jnp.asarray(x, jnp.float32)), np.float64)
  return fn


def streaming_stats(batches: Iterable[np.ndarray],
                    feature_fn: Callable[[np.ndarray], np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray, int]:
  """(μ, Σ, n) of the features of every image, accumulated in float64."""
  total, outer, n = None, None, 0
  for images in batches:
    f = feature_fn(images)
    if total is None:
      total, outer = np.zeros(f.shape[1]), np.zeros((f.shape[1],) * 2)
    total += f.sum(0)
    outer += f.T @ f
    n += len(f)
  if n < 2:
    raise UserError('FID statistics need at least 2 images')
  mu = total / n
  return mu, (outer - n * np.outer(mu, mu)) / (n - 1), n


def dataset_batches(source, batch: int, image_size: int,
                    num: int | None = None):
  """uint8 images of a data.Source, in order, `batch` at a time, resized to
  the model's `image_size` as training sees them."""
  from ddpm_jax import data as data_lib
  n = len(source) if num is None else min(num, len(source))
  for i in range(0, n, batch):
    images, _ = source.read(np.arange(i, min(i + batch, n)))
    if images.shape[1:3] != (image_size, image_size):
      images = data_lib.to_uint8(data_lib.preprocess(
          jnp.asarray(images), image_size, False, None))
    yield images


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, n: int) -> None:
  """pytorch-fid's .npz layout (mu, sigma), plus the image count."""
  try:
    atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma, num_images=n))
  except OSError as e:
    raise UserError(f'cannot write FID statistics {path}: {e.strerror}') from e


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    with np.load(files.open_read(path)) as f:
      return f['mu'], f['sigma']
  except (OSError, KeyError, ValueError) as e:
    raise UserError(f'cannot read FID statistics {path} (need an .npz with mu '
                    f'and sigma): {e}') from e


def reference_stats(data_cfg, feature_fn, path: str | None = None,
                    num: int | None = None, batch: int = 200
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(μ, Σ) of the training split's features (the paper's reference set),
  read from `path` if it exists, else computed and saved there."""
  if path and files.exists(path):
    return load_stats(path)
  from ddpm_jax import data as data_lib
  train = types.SimpleNamespace(name=data_cfg.name, split='train',
                                data_dir=data_cfg.get('data_dir'))
  source = data_lib.load_source(train)
  mu, sigma, n = streaming_stats(
      dataset_batches(source, batch, data_cfg.image_size, num), feature_fn)
  if path:
    save_stats(path, mu, sigma, n)
  return mu, sigma


def convert_weights(src: str, out: str) -> int:
  """pytorch-fid's .pth (or an .npz) → an .npz with the same keys, checked
  against the network first. Returns the number of arrays written."""
  weights = _read_weights(src)
  load_state_dict(_abstract_model(), weights, source=src)  # validates
  try:
    atomic_write(out, lambda f: np.savez(f, **weights))
  except OSError as e:
    raise UserError(f'cannot write {out}: {e.strerror}') from e
  return len(weights)
