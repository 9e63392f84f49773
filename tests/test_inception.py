"""FID Inception: blocks against float64 NumPy, weight loading, statistics.

python -m experiments.check_inception compares the whole network with pytorch-fid's
(same generated weights; max relative difference 3e-7); it needs torch, so
it is not part of this suite.
"""

import numpy as np
import pytest
from flax import nnx

from ddpm_jax.metrics import inception as inc
from ddpm_jax.errors import UserError


def _np_conv(x, k_HWIO, stride, pad):
  (ph, pw), s = pad, stride
  x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  kh, kw = k_HWIO.shape[:2]
  ho, wo = (x.shape[1] - kh) // s + 1, (x.shape[2] - kw) // s + 1
  out = np.zeros((x.shape[0], ho, wo, k_HWIO.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += x[:, i:i + s * ho:s, j:j + s * wo:s, :] @ k_HWIO[i, j]
  return out


def _np_basic(sd, name, x, stride=1, pad=(0, 0)):
  w = sd[f'{name}.conv.weight'].astype(np.float64).transpose(2, 3, 1, 0)
  y = _np_conv(x, w, stride, pad)
  g, b, m, v = (sd[f'{name}.bn.{k}'].astype(np.float64)
                for k in ('weight', 'bias', 'running_mean', 'running_var'))
  return np.maximum((y - m) / np.sqrt(v + 1e-3) * g + b, 0)


def _np_pool3(x, kind):
  """3×3, stride 1, padding 1; 'avg' leaves padding out of the count."""
  fill = -np.inf if kind == 'max' else 0.0
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
  ones = np.pad(np.ones_like(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  H, W = x.shape[1:3]
  wins = [xp[:, i:i + H, j:j + W] for i in range(3) for j in range(3)]
  if kind == 'max':
    return np.max(wins, axis=0)
  counts = sum(ones[:, i:i + H, j:j + W] for i in range(3) for j in range(3))
  return sum(wins) / counts


def _randomize(model_or_shapes, seed=0):
  sd = (inc.export_state_dict(model_or_shapes)
        if isinstance(model_or_shapes, nnx.Module) else
        {k: np.zeros(v, np.float32) for k, v in model_or_shapes.items()})
  rng = np.random.default_rng(seed)
  for k, v in sd.items():
    if k.endswith('conv.weight'):
      sd[k] = rng.normal(0, 0.2, v.shape).astype(np.float32)
    elif k.endswith('running_var') or k.endswith('bn.weight'):
      sd[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    else:
      sd[k] = rng.normal(0, 0.3, v.shape).astype(np.float32)
  return sd


def test_inception_a_matches_float64_reference():
  block = inc.InceptionA(8, pool_features=16, rngs=nnx.Rngs(0))
  sd = _randomize(block)
  inc.load_state_dict(block, sd)
  x = np.random.default_rng(1).normal(size=(2, 6, 5, 8))
  ref = np.concatenate([
      _np_basic(sd, 'branch1x1', x),
      _np_basic(sd, 'branch5x5_2', _np_basic(sd, 'branch5x5_1', x), pad=(2, 2)),
      _np_basic(sd, 'branch3x3dbl_3', _np_basic(
          sd, 'branch3x3dbl_2', _np_basic(sd, 'branch3x3dbl_1', x), pad=(1, 1)),
          pad=(1, 1)),
      _np_basic(sd, 'branch_pool', _np_pool3(x, 'avg'))], -1)
  np.testing.assert_allclose(np.asarray(block(x.astype(np.float32))), ref,
                             rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_inception_e2_matches_float64_reference():
  block = inc.InceptionE(8, max_pool=True, rngs=nnx.Rngs(0))
  sd = _randomize(block, 2)
  inc.load_state_dict(block, sd)
  x = np.random.default_rng(3).normal(size=(1, 4, 5, 8))
  b3 = _np_basic(sd, 'branch3x3_1', x)
  d = _np_basic(sd, 'branch3x3dbl_2', _np_basic(sd, 'branch3x3dbl_1', x), pad=(1, 1))
  ref = np.concatenate([
      _np_basic(sd, 'branch1x1', x),
      _np_basic(sd, 'branch3x3_2a', b3, pad=(0, 1)),
      _np_basic(sd, 'branch3x3_2b', b3, pad=(1, 0)),
      _np_basic(sd, 'branch3x3dbl_3a', d, pad=(0, 1)),
      _np_basic(sd, 'branch3x3dbl_3b', d, pad=(1, 0)),
      _np_basic(sd, 'branch_pool', _np_pool3(x, 'max'))], -1)
  np.testing.assert_allclose(np.asarray(block(x.astype(np.float32))), ref,
                             rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_strided_blocks_shapes():
  x = np.zeros((1, 17, 17, 8), np.float32)
  assert inc.InceptionB(8, rngs=nnx.Rngs(0))(x).shape == (1, 8, 8, 384 + 96 + 8)
  assert inc.InceptionD(8, rngs=nnx.Rngs(0))(x).shape == (1, 8, 8, 320 + 192 + 8)


@pytest.fixture(scope='module')
def weights_npz(tmp_path_factory):
  """pytorch-fid-layout weights generated here (the real file cannot be
  downloaded), plus a 1008-class fc as the real file has."""
  sd = _randomize(inc.state_dict_shapes(), 5)
  for k in list(sd):
    if k.endswith('conv.weight'):  # keep activations O(1) through 94 layers
      fan_in = np.prod(sd[k].shape[1:])
      sd[k] = (sd[k] / (0.2 * np.sqrt(fan_in))).astype(np.float32)
  sd['fc.weight'] = np.zeros((inc.FID_CLASSES, 2048), np.float32)
  sd['fc.bias'] = np.zeros(inc.FID_CLASSES, np.float32)
  sd['Conv2d_1a_3x3.bn.num_batches_tracked'] = np.array(0)
  path = tmp_path_factory.mktemp('inc') / 'fid_inception.npz'
  np.savez(path, **sd)
  return str(path), sd


def test_loads_pytorch_fid_layout_and_roundtrips(weights_npz):
  path, sd = weights_npz
  model = inc.load_fid_inception(path)
  assert len(inc.export_state_dict(model)) == 470  # 94 conv+BN layers
  back = inc.export_state_dict(model)
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k])
  fn = inc.make_feature_fn(model, size=75)  # the smallest valid size: fast
  x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
  f = fn(x)
  assert f.shape == (3, 2048) and f.dtype == np.float64
  assert np.isfinite(f).all() and f.std() > 0
  np.testing.assert_allclose(fn(np.repeat(x, 3, -1)), f, rtol=1e-6)  # gray = RGB
  np.testing.assert_allclose(fn(x.astype(np.float32) / 127.5 - 1), f, rtol=1e-5)


@pytest.mark.parametrize('edit, message', [
    (lambda sd: sd.pop('Mixed_7c.branch_pool.bn.running_var'), 'lacks Mixed_7c.branch_pool.bn.running_var'),
    (lambda sd: sd.update({'Mixed_5b.branch1x1.conv.weight': np.zeros((64, 192, 3, 3))}),
     'Mixed_5b.branch1x1.conv.weight has shape (64, 192, 3, 3)'),
    (lambda sd: sd.update({'fc.weight': np.zeros((1000, 2048))}), 'not the FID Inception'),
])
def test_bad_weights_one_clear_error(weights_npz, tmp_path, edit, message):
  sd = dict(weights_npz[1])
  edit(sd)
  path = tmp_path / 'w.npz'
  np.savez(path, **sd)
  with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
    inc.load_fid_inception(str(path))


def test_missing_weights_file(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    inc.load_fid_inception(str(tmp_path / 'nope.npz'))


def test_streaming_stats_match_numpy(tmp_path):
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 3.0
  batches = [feats[i:i + 16] for i in range(0, 50, 16)]
  mu, sigma, n = inc.streaming_stats(batches, lambda f: f)
  assert n == 50
  np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-9)
  inc.save_stats(str(tmp_path / 's.npz'), mu, sigma, n)
  mu2, sigma2 = inc.load_stats(str(tmp_path / 's.npz'))
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)


def test_stats_files_errors_are_one_clear_line(tmp_path):
  with pytest.raises(UserError, match='cannot write FID statistics'):
    inc.save_stats(str(tmp_path / 'missing_dir' / 's.npz'), np.zeros(2), np.eye(2), 2)
  (tmp_path / 'bad.npz').write_text('not an npz')
  with pytest.raises(UserError, match='cannot read FID statistics'):
    inc.load_stats(str(tmp_path / 'bad.npz'))
