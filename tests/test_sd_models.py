"""Stable Diffusion's UNet2DConditionModel and AutoencoderKL in Flax NNX,
against tiny pipelines diffusers itself built and ran
(tests/fixtures/make_sd_fixtures.py); the suite needs neither torch nor
diffusers. Missing fixtures fail: they are part of the repository."""

from __future__ import annotations

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from conftest import REPO
from ddpm_jax.errors import UserError
from ddpm_jax.models import sd_unet, sd_vae

FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'sd')
CASES = ['sd1', 'sd2', 'inpaint']
WEIGHTS = 'diffusion_pytorch_model.safetensors'


def _folder(case: str, part: str) -> tuple[dict, dict[str, np.ndarray]]:
  d = os.path.join(FIXTURES, case, part)
  assert os.path.isfile(os.path.join(FIXTURES, 'READY')), (
      f'{FIXTURES} is incomplete: run tests/fixtures/make_sd_fixtures.py')
  with open(os.path.join(d, 'config.json'), encoding='utf-8') as f:
    return json.load(f), load_file(os.path.join(d, WEIGHTS))


def _ref(case: str) -> dict[str, np.ndarray]:
  r = np.load(os.path.join(FIXTURES, case, 'reference.npz'))
  nhwc = lambda k: np.transpose(r[k], (0, 2, 3, 1))
  return {'x': nhwc('unet_sample'), 't': r['unet_timesteps'],
          'ctx': r['unet_context'], 'out': nhwc('unet_out'),
          'z': nhwc('vae_decode_in'), 'image': nhwc('vae_decode_out'),
          'x_enc': nhwc('vae_encode_in'), 'mean': nhwc('vae_encode_mean')}


def _rel(a, ref) -> float:
  return float(np.abs(np.asarray(a) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope='module')
def unets():
  """case -> (jitted apply, params); sd1's may trace only once (chex
  counts traces per place of wrapping, so only one case is wrapped)."""
  out = {}
  for case in CASES:
    gd, params = sd_unet.unet_from_diffusers(*_folder(case, 'unet'))
    out[case] = sd_unet.make_unet_apply(gd), params
  apply, params = out['sd1']
  out['sd1'] = chex.assert_max_traces(apply, n=1), params
  return {case: (jax.jit(f), p) for case, (f, p) in out.items()}


@pytest.mark.parametrize('case', CASES)
def test_the_unet_predicts_what_diffusers_does(unets, case):
  apply, params = unets[case]
  r = _ref(case)
  out = apply(params, r['x'], r['t'], r['ctx'])
  assert out.dtype == jnp.float32 and out.shape == r['out'].shape
  assert _rel(out, r['out']) < 1e-4


@pytest.mark.parametrize('case', CASES)
def test_the_vae_encodes_and_decodes_as_diffusers_does(case):
  gd, params = sd_vae.vae_from_diffusers(*_folder(case, 'vae'))
  fns = sd_vae.make_vae_fns(gd)
  r = _ref(case)
  mean, logvar = jax.jit(fns.encode)(params, r['x_enc'])
  assert mean.shape == logvar.shape == r['mean'].shape
  assert _rel(mean, r['mean']) < 1e-4
  assert _rel(jax.jit(fns.decode)(params, r['z']), r['image']) < 1e-4


def test_bfloat16_stays_close():
  """bf16 compute (norm and softmax statistics in float32): a few percent
  of the output's range on these tiny random networks. sd2: upcast
  attention, linear projections, per-level head counts."""
  cfg, tensors = _folder('sd2', 'unet')
  r = _ref('sd2')
  gd, params = sd_unet.unet_from_diffusers(cfg, tensors, 'bfloat16')
  assert _rel(jax.jit(sd_unet.make_unet_apply(gd))(
      params, r['x'], r['t'], r['ctx']), r['out']) < 0.1
  gd, params = sd_vae.vae_from_diffusers(*_folder('sd2', 'vae'), 'bfloat16')
  assert _rel(jax.jit(sd_vae.make_vae_fns(gd).decode)(params, r['z']),
              r['image']) < 0.1


def test_the_jitted_unet_traces_once(unets):
  apply, params = unets['sd1']
  r = _ref('sd1')
  a = apply(params, r['x'], r['t'], r['ctx'])
  b = apply(params, r['x'][::-1] * 0.5, np.array([3.5, 999.0], np.float32)
            .astype(r['t'].dtype), r['ctx'] + 1.0)
  assert not np.allclose(a, b)


def _one_line_error(fn, *needles: str) -> str:
  with pytest.raises(UserError) as e:
    fn()
  msg = str(e.value)
  assert '\n' not in msg, msg
  for n in needles:
    assert n in msg, msg
  return msg


def test_an_sdxl_unet_is_refused_in_one_line():
  cfg, _ = _folder('sd1', 'unet')
  sdxl = dict(cfg, addition_embed_type='text_time', addition_time_embed_dim=256,
              projection_class_embeddings_input_dim=2816)
  _one_line_error(lambda: sd_unet.abstract_unet(sdxl), 'addition_embed_type',
                  'SDXL', 'not supported yet')


@pytest.mark.parametrize('field,value', [
    ('class_embed_type', 'timestep'), ('resnet_time_scale_shift', 'scale_shift'),
    ('mid_block_type', 'UNetMidBlock2DSimpleCrossAttn'), ('only_cross_attention', True),
    ('dual_cross_attention', True), ('time_cond_proj_dim', 256),
    ('encoder_hid_dim', 1024), ('down_block_types', ['DownBlock2D', 'AttnDownBlock2D'])])
def test_unsupported_unet_fields_are_refused_in_one_line(field, value):
  cfg, _ = _folder('sd1', 'unet')
  _one_line_error(lambda: sd_unet.check_config(dict(cfg, **{field: value})), field)


def test_unsupported_vae_fields_are_refused_in_one_line():
  cfg, _ = _folder('sd1', 'vae')
  _one_line_error(lambda: sd_vae.abstract_vae(dict(cfg, latents_mean=[0.0] * 4)),
                  'latents_mean')
  _one_line_error(lambda: sd_vae.check_config(dict(cfg, _class_name='AutoencoderTiny')),
                  'AutoencoderTiny')


def test_a_misshapen_missing_or_extra_tensor_is_one_line():
  cfg, tensors = _folder('sd1', 'unet')
  model = sd_unet.abstract_unet(cfg)
  key = 'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight'
  bad = dict(tensors, **{key: np.zeros((64, 31), np.float32)})
  _one_line_error(lambda: sd_unet.params_from_diffusers(bad, model), key,
                  '[64, 31]', '[64, 32]')
  less = {k: v for k, v in tensors.items() if k != key}
  _one_line_error(lambda: sd_unet.params_from_diffusers(less, model), key, '1 tensor')
  more = dict(tensors, **{'add_embedding.linear_1.weight': np.zeros((4, 4))})
  _one_line_error(lambda: sd_unet.params_from_diffusers(more, model),
                  'add_embedding.linear_1.weight', '1 tensor')
  vcfg, vt = _folder('sd1', 'vae')
  key = 'decoder.up_blocks.0.resnets.0.conv1.weight'
  bad = dict(vt, **{key: vt[key][:, :-1]})
  _one_line_error(lambda: sd_vae.params_from_diffusers(bad, sd_vae.abstract_vae(vcfg)),
                  key)


def test_the_params_have_the_models_structure_and_old_vae_names_map():
  cfg, tensors = _folder('sd1', 'unet')
  model = sd_unet.abstract_unet(cfg)
  params = sd_unet.params_from_diffusers(tensors, model)
  want = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, want)
  # SD 1.x's proj_in is a 1×1 conv: stored [O, I, 1, 1], mapped as a Linear
  k = 'down_blocks.1.attentions.0.proj_in.weight'
  assert tensors[k].ndim == 4
  np.testing.assert_array_equal(
      params['down_blocks'][1]['attentions'][0]['proj_in']['kernel'],
      tensors[k][:, :, 0, 0].T.astype(np.float32))
  vcfg, vt = _folder('sd1', 'vae')
  old = {}
  for k, v in vt.items():   # diffusers' pre-0.14 attention names
    for new, was in (('to_q', 'query'), ('to_k', 'key'), ('to_v', 'value'),
                     ('to_out.0', 'proj_attn')):
      k = k.replace(f'attentions.0.{new}.', f'attentions.0.{was}.')
    old[k] = v
  assert old.keys() != vt.keys()
  vae = sd_vae.abstract_vae(vcfg)
  a, b = (sd_vae.params_from_diffusers(t, vae) for t in (vt, old))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert vae.scaling_factor == 0.18215 and vae.shift_factor is None
