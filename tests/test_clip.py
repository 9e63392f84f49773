"""Stable Diffusion's CLIP text side against transformers 5: the tokenizer's
ids and the text encoder's last_hidden_state, from the fixtures
make_sd_fixtures.py wrote with torch (tests/fixtures/sd/)."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from conftest import REPO
from ddpm_jax.clip_tokenizer import ClipTokenizer
from ddpm_jax.errors import UserError
from ddpm_jax.models.clip import ClipTextModel, params_from_transformers

SD = os.path.join(REPO, 'tests', 'fixtures', 'sd')
FOLDERS = ['sd1', 'sd2', 'inpaint']


def _ref(name):
  return np.load(os.path.join(SD, name, 'reference.npz'))


def _prompts(name):
  return [str(p) for p in _ref(name)['prompts']]


def _load(name, dtype=jnp.float32):
  folder = os.path.join(SD, name, 'text_encoder')
  with open(os.path.join(folder, 'config.json')) as f:
    model = ClipTextModel.from_config(json.load(f), dtype=dtype)
  tensors = load_file(os.path.join(folder, 'model.safetensors'))
  nnx.update(model, params_from_transformers(tensors, model))
  return model, tensors


def _rel(a, ref):
  a = np.asarray(a, np.float32)
  return float(np.abs(a - ref).max() / np.abs(ref).max())


def _bos_to_eos(ids, eos):
  """True from BOS to the first EOS: transformers' attention_mask."""
  is_eos = ids == eos
  return (np.cumsum(is_eos, 1) - is_eos) == 0


# The tokenizer.

@pytest.mark.parametrize('name', FOLDERS)
def test_ids_match_clip_tokenizer(name):
  ref = _ref(name)
  tok = ClipTokenizer.from_folder(os.path.join(SD, name, 'tokenizer'))
  ids = tok(_prompts(name))
  assert ids.dtype == np.int32 and ids.shape == (len(ref['prompts']), 77)
  np.testing.assert_array_equal(ids, ref['input_ids'])
  assert tok.max_length == 77
  assert tok.last_truncated == int(ref['num_truncated']) == 1


def test_pad_tokens_of_sd1_and_sd2():
  sd1 = ClipTokenizer.from_folder(os.path.join(SD, 'sd1', 'tokenizer'))
  sd2 = ClipTokenizer.from_folder(os.path.join(SD, 'sd2', 'tokenizer'))
  assert sd1.pad_id == sd1.eos_id and sd2.pad_id == 0
  ids1, ids2 = sd1(['']), sd2([''])
  assert list(ids1[0, :3]) == [sd1.bos_id, sd1.eos_id, sd1.eos_id]
  assert list(ids2[0, :3]) == [sd2.bos_id, sd2.eos_id, 0]


@pytest.mark.parametrize('files, config, ref', [
    (('vocab.json', 'merges.txt'), 'sd2', 'sd2'),   # vocab files, pad "!"
    (('tokenizer.json',), 'sd1', 'sd1'),            # tokenizer.json, pad EOS
])
def test_both_layouts_give_the_same_ids(tmp_path, files, config, ref):
  src = os.path.join(SD, 'sd2' if files == ('tokenizer.json',) else 'sd1',
                     'tokenizer')
  for f in files:
    shutil.copy(os.path.join(src, f), tmp_path / f)
  shutil.copy(os.path.join(SD, config, 'tokenizer', 'tokenizer_config.json'),
              tmp_path / 'tokenizer_config.json')
  ids = ClipTokenizer.from_folder(str(tmp_path))(_prompts(ref))
  np.testing.assert_array_equal(ids, _ref(ref)['input_ids'])


def test_truncation_keeps_eos_last():
  tok = ClipTokenizer.from_folder(os.path.join(SD, 'sd1', 'tokenizer'))
  ids, cut = tok.encode(['word ' * 200, 'a cat', 'dog ' * 200])
  assert cut == 2
  assert ids[0, -1] == ids[2, -1] == tok.eos_id
  assert ids[0, 0] == tok.bos_id and (ids[0, 1:-1] != tok.eos_id).all()
  tok(['a cat'])
  assert tok.last_truncated == 0


def test_special_tokens_map_sets_the_pad_token(tmp_path):
  for f in ('vocab.json', 'merges.txt'):
    shutil.copy(os.path.join(SD, 'sd1', 'tokenizer', f), tmp_path / f)
  # An SD 1.x-era map: AddedToken dicts.
  (tmp_path / 'special_tokens_map.json').write_text(json.dumps(
      {'pad_token': {'content': '!', 'lstrip': False},
       'bos_token': '<|startoftext|>'}))
  tok = ClipTokenizer.from_folder(str(tmp_path))
  np.testing.assert_array_equal(tok(_prompts('sd2')), _ref('sd2')['input_ids'])


@pytest.mark.parametrize('breakage, named', [
    ('missing folder', 'nowhere'),
    ('empty folder', 'tok'),
    ('vocab.json not JSON', 'vocab.json'),
    ('vocab.json a list', 'vocab.json'),
    ('merges.txt malformed', 'merges.txt'),
    ('tokenizer.json not JSON', 'tokenizer.json'),
    ('tokenizer.json without merges', 'tokenizer.json'),
    ('tokenizer_config.json not JSON', 'tokenizer_config.json'),
    ('pad token not in vocab', 'vocab.json'),
])
def test_a_bad_folder_is_a_user_error(tmp_path, breakage, named):
  folder = tmp_path / 'tok'
  folder.mkdir()
  src = os.path.join(SD, 'sd1', 'tokenizer')
  if breakage.startswith(('vocab', 'merges', 'pad', 'tokenizer_config')):
    for f in ('vocab.json', 'merges.txt'):
      shutil.copy(os.path.join(src, f), folder / f)
  if breakage == 'vocab.json not JSON':
    (folder / 'vocab.json').write_text('{"a": 1,')
  elif breakage == 'vocab.json a list':
    (folder / 'vocab.json').write_text('["a"]')
  elif breakage == 'merges.txt malformed':
    (folder / 'merges.txt').write_text('#version: 0.2\na b c\n')
  elif breakage == 'tokenizer.json not JSON':
    (folder / 'tokenizer.json').write_bytes(b'\xff\xfe garbage')
  elif breakage == 'tokenizer.json without merges':
    (folder / 'tokenizer.json').write_text('{"model": {"type": "BPE"}}')
  elif breakage == 'tokenizer_config.json not JSON':
    (folder / 'tokenizer_config.json').write_text('{')
  elif breakage == 'pad token not in vocab':
    (folder / 'tokenizer_config.json').write_text('{"pad_token": "<pad>"}')
  path = str(tmp_path / 'nowhere' if breakage == 'missing folder' else folder)
  with pytest.raises(UserError) as e:
    ClipTokenizer.from_folder(path)
  msg = str(e.value)
  assert named in msg and '\n' not in msg, msg


# The text encoder.

@pytest.mark.parametrize('name', FOLDERS)
def test_text_encoder_matches_transformers(name):
  ref = _ref(name)
  model, _ = _load(name)
  ids = jnp.asarray(ref['input_ids'])
  out = model(ids)
  assert out.shape == ref['text_hidden'].shape and out.dtype == jnp.float32
  assert _rel(out, ref['text_hidden']) < 1e-4
  # With an attention mask transformers 5 masks padding keys as well.
  eos = ClipTokenizer.from_folder(os.path.join(SD, name, 'tokenizer')).eos_id
  mask = jnp.asarray(_bos_to_eos(ref['input_ids'], eos))
  assert _rel(model(ids, mask), ref['text_hidden_masked']) < 1e-4
  assert _rel(model(ids, mask), ref['text_hidden']) > 1e-3


def test_bfloat16_is_close():
  ref = _ref('sd1')
  model, _ = _load('sd1', jnp.bfloat16)
  out = model(jnp.asarray(ref['input_ids']))
  assert out.dtype == jnp.float32
  assert model.token_embedding.embedding[...].dtype == jnp.float32
  assert _rel(out, ref['text_hidden']) < 0.05


def test_published_key_prefix_loads_the_same():
  """SD checkpoints (transformers 4) name keys text_model.*; transformers 5
  saves them bare."""
  model, tensors = _load('sd2')
  bare = params_from_transformers(tensors, model)
  prefixed = {'text_model.' + k: v for k, v in tensors.items()}
  prefixed['text_model.embeddings.position_ids'] = np.arange(77)[None]
  prefixed['text_projection.weight'] = np.zeros((4, 32), np.float32)
  chex.assert_trees_all_equal(params_from_transformers(prefixed, model), bare)


def test_bad_weights_are_user_errors():
  model, tensors = _load('sd1')
  missing = dict(tensors)
  del missing['encoder.layers.3.self_attn.k_proj.bias']
  with pytest.raises(UserError,
                     match=r'lack encoder\.layers\.3\.self_attn\.k_proj\.bias'):
    params_from_transformers(missing, model)
  wrong = dict(tensors)
  wrong['encoder.layers.0.mlp.fc1.weight'] = np.zeros((36, 32), np.float16)
  with pytest.raises(UserError, match=r'encoder\.layers\.0\.mlp\.fc1\.weight '
                     r'has shape \[36, 32\]; .* \[37, 32\]'):
    params_from_transformers(wrong, model)
  extra = dict(tensors)
  extra['encoder.layers.5.layer_norm1.weight'] = np.ones(32, np.float32)
  with pytest.raises(UserError,
                     match=r'encoder\.layers\.5\.layer_norm1\.weight'):
    params_from_transformers(extra, model)
  with pytest.raises(UserError, match='hidden_act'):
    ClipTextModel.from_config(dict(vocab_size=10, hidden_size=8,
                                   intermediate_size=8, num_attention_heads=2,
                                   num_hidden_layers=1, hidden_act='relu2'))


def test_jitted_encoder_traces_once():
  ref = _ref('sd1')
  model, _ = _load('sd1')
  graphdef, state = nnx.split(model)
  tok = ClipTokenizer.from_folder(os.path.join(SD, 'sd1', 'tokenizer'))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def encode(state, ids):
    return nnx.merge(graphdef, state)(ids)

  a = encode(state, jnp.asarray(tok(['a cat', 'a dog'])))
  b = encode(state, jnp.asarray(tok(_prompts('sd1')[:2])))
  assert a.shape == b.shape == (2, 77, 32)
  assert _rel(b, ref['text_hidden'][:2]) < 1e-4
