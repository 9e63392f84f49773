import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ddpm_jax import builders
from ddpm_jax import config as config_lib
from ddpm_jax.models.layers import count_params, split_params
from ddpm_jax.models.unet import UNet, build_unet, make_apply, timestep_embedding


def _abstract_count(**kw):
  """Parameter count without allocating: shapes only."""
  state = jax.eval_shape(lambda: split_params(UNet(rngs=nnx.Rngs(0), **kw))[1])
  return count_params(state)


def test_cifar10_paper_model_has_35_7m_params():
  n = _abstract_count(in_channels=3, ch=128, ch_mult=(1, 2, 2, 2),
                      num_res_blocks=2, attn_levels=(1,), dropout=0.1)
  assert abs(n - 35.75e6) < 0.1e6, n


def test_mnist_default_is_small():
  c = config_lib.base_config()
  n = count_params(jax.eval_shape(lambda: split_params(build_unet(
      c.model, c.data.image_size, c.data.channels, c.data.num_classes))[1]))
  assert 1.5e6 < n < 1.7e6, n


def _tiny(**kw):
  args = dict(in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
              attn_levels=(1,), num_groups=4, rngs=nnx.Rngs(0))
  args.update(kw)
  return UNet(**args)


def test_output_shape_and_dropout_only_with_key():
  m = _tiny(dropout=0.5)
  g, p = split_params(m)
  # Break the zero init of the output conv so dropout is visible in the output.
  p = jax.tree.map(lambda x: x + 0.05, p)
  apply = make_apply(g)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  t = jnp.array([3, 40])
  a = apply(p, x, t)
  assert a.shape == x.shape and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, apply(p, x, t))
  d1 = apply(p, x, t, None, jax.random.key(1))
  d2 = apply(p, x, t, None, jax.random.key(2))
  assert not np.allclose(d1, a) and not np.allclose(d1, d2)


def test_class_embedding_changes_output_and_null_label_is_default():
  m = _tiny(num_classes=3)
  g, p = split_params(m)
  p = jax.tree.map(lambda x: x + 0.05, p)
  apply = make_apply(g)
  x = jnp.ones((2, 8, 8, 1))
  t = jnp.array([5, 5])
  y0 = apply(p, x, t, jnp.array([0, 0]))
  y1 = apply(p, x, t, jnp.array([1, 1]))
  assert not np.allclose(y0, y1)
  np.testing.assert_array_equal(apply(p, x, t), apply(p, x, t, jnp.array([3, 3])))


def test_attention_levels_from_resolutions():
  from ddpm_jax.models.unet import attention_levels
  assert attention_levels(32, (1, 2, 2, 2), (16,)) == (1,)     # the paper's CIFAR
  assert attention_levels(28, (1, 2, 4), (7,)) == (2,)         # the MNIST default
  assert attention_levels(28, (1, 2), (7,), patch_size=2) == (1,)
  assert attention_levels(28, (1, 2, 2), (28, 7)) == (0, 2)
  assert attention_levels(28, (1, 2, 2), ()) == ()


# Where each shipped config's attention blocks sit, and its parameter count,
# recorded with the UNet that placed attention by absolute resolution (commit
# 33d0e24): placing it by level must keep every checkpoint's tree.
_SHIPPED = {
    'cifar10': (35746307, ['down/3', 'down/4', 'up/10', 'up/8', 'up/9']),
    'fashion_mnist': (6469889, ['down/3', 'down/4', 'up/4', 'up/5', 'up/6']),
    'mnist': (687473, ['down/4', 'up/0', 'up/1']),
    'mnist_paper': (1623169, ['down/3', 'down/4', 'up/4', 'up/5', 'up/6']),
    'mnist_uncond': (686769, ['down/4', 'up/0', 'up/1']),
    'tiny': (44969, ['down/2', 'up/0', 'up/1']),
}


@pytest.mark.parametrize('name', sorted(_SHIPPED))
def test_shipped_configs_keep_their_parameter_tree(name):
  import os
  c = config_lib.load_config_file(os.path.join(
      os.path.dirname(__file__), '..', 'configs', name + '.py'))
  params = nnx.to_pure_dict(split_params(nnx.eval_shape(
      lambda: builders.model_from_config(c)))[1])
  attn = sorted(f'{part}/{i}' for part in ('down', 'up')
                for i, pair in params[part].items() if 1 in pair)
  assert (count_params(params), attn) == _SHIPPED[name]


def test_attention_runs_on_a_larger_canvas():
  """A model built for 8×8 with attention at level 1 (4×4) still attends on
  a 12×12 canvas, where level 1 is 6×6."""
  g, p = split_params(_tiny())
  p = jax.tree.map(lambda x: x + 0.05, p)
  x = jax.random.normal(jax.random.key(0), (1, 12, 12, 1))
  t = jnp.array([10])
  apply = make_apply(g)
  out = apply(p, x, t)
  assert out.shape == x.shape
  p2 = nnx.to_pure_dict(p)
  attn = p2['down'][2][1]
  attn['qkv']['kernel'] = attn['qkv']['kernel'] * 3.0
  assert not np.allclose(out, apply(p2, x, t))


def test_timestep_embedding_matches_formula():
  t = jnp.array([0, 7, 999])
  e = np.asarray(timestep_embedding(t, 6))
  freqs = np.exp(-np.log(10000.0) * np.arange(3) / 2)
  ref = np.concatenate([np.sin(np.outer([0, 7, 999], freqs)),
                        np.cos(np.outer([0, 7, 999], freqs))], 1)
  np.testing.assert_allclose(e, ref, atol=1e-4)


def test_bad_image_size_is_rejected_by_validation():
  c = config_lib.base_config()
  c.data.image_size = 30  # 30 -> 15 -> cannot halve again for ch_mult (1,2,2)
  with pytest.raises(config_lib.ConfigError, match='cannot be halved'):
    config_lib.validate(c)


def test_attention_at_a_missing_resolution_is_rejected():
  c = config_lib.base_config()
  c.model.attn_resolutions = (16,)   # 28 -> 14 -> 7: no 16×16 level
  with pytest.raises(config_lib.ConfigError, match='levels are'):
    config_lib.validate(c)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  kw = dict(in_channels=1, ch=16, ch_mult=(1, 2), num_res_blocks=1,
            attn_levels=(1,), num_groups=4)
  g32, p32 = split_params(UNet(rngs=nnx.Rngs(0), **kw))
  g16, p16 = split_params(UNet(rngs=nnx.Rngs(0), dtype='bfloat16', **kw))
  assert {x.dtype for x in jax.tree.leaves(p16)} == {jnp.dtype('float32')}
  p = jax.tree.map(lambda x: x + 0.05 * jnp.sign(x + 1e-3), p32)  # non-zero output
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  t = jnp.array([0, 10, 500, 999])
  a = jax.jit(make_apply(g32))(p, x, t)
  b = jax.jit(make_apply(g16))(p, x, t)
  assert b.dtype == jnp.float32
  rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
  assert rel < 0.03, rel  # bf16 has an 8-bit mantissa: ~0.4% per op
  assert rel > 0        # and it really computed in bf16


def test_group_norm_matches_float64_reference_and_nnx():
  from ddpm_jax.models.unet import GroupNorm
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 5, 6, 16)) * 2 + 0.5).astype(np.float32)
  ours = GroupNorm(16, 4, epsilon=1e-6, rngs=nnx.Rngs(0))
  ref_mod = nnx.GroupNorm(16, 4, epsilon=1e-6, rngs=nnx.Rngs(0))
  scale, bias = rng.normal(size=16), rng.normal(size=16)
  for m in (ours, ref_mod):
    m.scale[...] = jnp.asarray(scale, jnp.float32)
    m.bias[...] = jnp.asarray(bias, jnp.float32)
  xg = x.astype(np.float64).reshape(3, 5, 6, 4, 4)
  mean = xg.mean((1, 2, 4), keepdims=True)
  var = xg.var((1, 2, 4), keepdims=True)
  ref = ((xg - mean) / np.sqrt(var + 1e-6)).reshape(x.shape) * scale + bias
  np.testing.assert_allclose(np.asarray(ours(x)), ref, atol=2e-5)
  np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref_mod(x)), atol=2e-5)
  # same parameter tree as nnx.GroupNorm: checkpoints stay compatible
  assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(ref_mod))


def test_space_to_depth_folds_patches_and_inverts():
  from ddpm_jax.models.unet import depth_to_space, space_to_depth
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  y = space_to_depth(x, 2)
  assert y.shape == (2, 2, 3, 12)
  # pixel (1, 2) of the folded image holds the 2x2 patch at rows 2-3, cols 4-5
  np.testing.assert_array_equal(y[0, 1, 2].reshape(2, 2, 3), x[0, 2:4, 4:6])
  np.testing.assert_array_equal(depth_to_space(y, 2), x)
  assert space_to_depth(x, 1) is x


def test_patch_size_runs_the_unet_at_lower_resolution():
  c = config_lib.base_config()
  c.model.patch_size = 2
  c.model.ch_mult = (1, 2)
  c.model.attn_resolutions = (7,)
  config_lib.validate(c)
  graphdef, params = split_params(builders.model_from_config(c))
  assert params['conv_in']['kernel'].shape == (3, 3, 4, 32)
  assert params['conv_out']['kernel'].shape == (3, 3, 32, 4)
  x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
  out = make_apply(graphdef)(params, x, jnp.array([3, 500]))
  assert out.shape == x.shape
  c.model.ch_mult = (1, 2, 2)   # 28 / 2 = 14 -> 7 -> cannot halve again
  with pytest.raises(config_lib.ConfigError, match='patch_size=2; use a multiple of 8'):
    config_lib.validate(c)
