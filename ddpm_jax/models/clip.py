"""CLIP's text encoder (Radford et al., 2021), the text model of Stable
Diffusion 1.x and 2.x, in Flax NNX: transformers' CLIPTextModel up to
last_hidden_state.

Token plus learned position embeddings, pre-LN layers of causal
self-attention and an MLP (quick_gelu for SD 1.x's OpenAI CLIP, exact gelu
for SD 2.x's OpenCLIP), a final LayerNorm. Module and parameter names follow
transformers' so `params_from_transformers` is a rename and a transpose.

`dtype` is the computation dtype; parameters stay float32, and LayerNorms
and softmax run in float32 whatever it is.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ddpm_jax.errors import UserError

ACTIVATIONS = {
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
}
CONFIG_KEYS = ('vocab_size', 'hidden_size', 'intermediate_size',
               'num_attention_heads', 'num_hidden_layers',
               'max_position_embeddings', 'hidden_act', 'layer_norm_eps')


def _layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=eps, dtype=jnp.float32,
                       param_dtype=jnp.float32, rngs=rngs)


def _linear(cin: int, cout: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(cin, cout, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class ClipAttention(nnx.Module):
  """Multi-head self-attention with separate q, k, v projections (biased)."""

  def __init__(self, dim: int, heads: int, dtype, *, rngs: nnx.Rngs):
    if dim % heads:
      raise UserError(f'hidden_size {dim} is not a multiple of '
                      f'num_attention_heads {heads}')
    self.heads = heads
    self.q_proj = _linear(dim, dim, dtype, rngs)
    self.k_proj = _linear(dim, dim, dtype, rngs)
    self.v_proj = _linear(dim, dim, dtype, rngs)
    self.out_proj = _linear(dim, dim, dtype, rngs)

  def __call__(self, x_BLD: jax.Array, allow_BLL: jax.Array) -> jax.Array:
    B, L, D = x_BLD.shape
    n = self.heads
    q = self.q_proj(x_BLD).reshape(B, L, n, D // n)
    k = self.k_proj(x_BLD).reshape(B, L, n, D // n)
    v = self.v_proj(x_BLD).reshape(B, L, n, D // n)
    logits = jnp.einsum('bqhc,bkhc->bhqk', q, k).astype(jnp.float32)
    logits = jnp.where(allow_BLL[:, None], logits * (D // n) ** -0.5,
                       jnp.finfo(jnp.float32).min)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return self.out_proj(jnp.einsum('bhqk,bkhc->bqhc', w, v).reshape(B, L, D))


class ClipLayer(nnx.Module):
  """Pre-LN: x + attn(LN x), then x + fc2(act(fc1(LN x)))."""

  def __init__(self, dim: int, mlp_dim: int, heads: int, act: str, eps: float,
               dtype, *, rngs: nnx.Rngs):
    self.layer_norm1 = _layer_norm(dim, eps, rngs)
    self.self_attn = ClipAttention(dim, heads, dtype, rngs=rngs)
    self.layer_norm2 = _layer_norm(dim, eps, rngs)
    self.fc1 = _linear(dim, mlp_dim, dtype, rngs)
    self.fc2 = _linear(mlp_dim, dim, dtype, rngs)
    self.act = act
    self.dtype = dtype

  def __call__(self, x_BLD: jax.Array, allow_BLL: jax.Array) -> jax.Array:
    h = self.layer_norm1(x_BLD).astype(self.dtype)
    x_BLD = x_BLD + self.self_attn(h, allow_BLL)
    h = self.layer_norm2(x_BLD).astype(self.dtype)
    return x_BLD + self.fc2(ACTIVATIONS[self.act](self.fc1(h)))


class ClipTextModel(nnx.Module):
  """ids int [B, L] (L <= max_position_embeddings) -> last_hidden_state
  float32 [B, L, hidden_size].

  Stable Diffusion 1.x/2.x call the model without an attention mask: only
  the causal mask applies. With `mask_BL` (True on BOS..EOS) padding keys
  are masked too, as transformers does when given attention_mask."""

  def __init__(self, *, vocab_size: int, hidden_size: int,
               intermediate_size: int, num_attention_heads: int,
               num_hidden_layers: int, max_position_embeddings: int = 77,
               hidden_act: str = 'quick_gelu', layer_norm_eps: float = 1e-5,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if hidden_act not in ACTIVATIONS:
      raise UserError(f'hidden_act {hidden_act!r} is not one of '
                      f'{", ".join(ACTIVATIONS)}')
    self.dtype = jnp.dtype(dtype)
    self.token_embedding = nnx.Embed(
        vocab_size, hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
        embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.position_embedding = nnx.Param(0.01 * jax.random.normal(
        rngs.params(), (max_position_embeddings, hidden_size)))
    self.layers = nnx.List([
        ClipLayer(hidden_size, intermediate_size, num_attention_heads,
                  hidden_act, layer_norm_eps, self.dtype, rngs=rngs)
        for _ in range(num_hidden_layers)])
    self.final_layer_norm = _layer_norm(hidden_size, layer_norm_eps, rngs)

  @classmethod
  def from_config(cls, config: Mapping[str, Any], *, dtype: Any = jnp.float32,
                  rngs: nnx.Rngs | None = None) -> 'ClipTextModel':
    """The model a transformers CLIPTextConfig (config.json) describes;
    fields it lacks take CLIPTextConfig's defaults where it has one."""
    defaults = dict(max_position_embeddings=77, hidden_act='quick_gelu',
                    layer_norm_eps=1e-5)
    kw = {}
    for key in CONFIG_KEYS:
      if key in config:
        kw[key] = config[key]
      elif key in defaults:
        kw[key] = defaults[key]
      else:
        raise UserError(f'the text encoder config lacks {key!r}')
    return cls(**kw, dtype=dtype, rngs=rngs or nnx.Rngs(0))

  def __call__(self, ids_BL: jax.Array,
               mask_BL: jax.Array | None = None) -> jax.Array:
    B, L = ids_BL.shape
    x = self.token_embedding(ids_BL)
    x = x + self.position_embedding[...][:L].astype(self.dtype)
    allow_BLL = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    if mask_BL is not None:
      allow_BLL = allow_BLL & mask_BL.astype(bool)[:, None, :]
    for layer in self.layers:
      x = layer(x, allow_BLL)
    return self.final_layer_norm(x)


PARTS = ('embeddings.', 'encoder.', 'final_layer_norm.')


def _hf_name(path: tuple) -> tuple[str, bool]:
  """(transformers key without its prefix, whether the tensor is
  transposed) of one parameter path of ClipTextModel's pure dict."""
  *mods, leaf = [str(p) for p in path]
  if mods and mods[0] == 'layers':
    mods = ['encoder', 'layers', mods[1],
            *(['mlp'] if mods[2] in ('fc1', 'fc2') else []), *mods[2:]]
  elif mods and mods[0] == 'token_embedding':
    mods = ['embeddings', 'token_embedding']
  elif not mods and leaf == 'position_embedding':
    mods, leaf = ['embeddings', 'position_embedding'], 'embedding'
  name = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}.get(
      leaf, leaf)
  return '.'.join([*mods, name]), leaf == 'kernel'


def params_from_transformers(tensors: Mapping[str, np.ndarray],
                             model: ClipTextModel) -> dict:
  """transformers' CLIPTextModel tensors (text_encoder/model.safetensors,
  read as numpy) as a pure dict shaped like
  `nnx.to_pure_dict(nnx.state(model, nnx.Param))` (Linear weights
  transposed, float32), for `nnx.update(model, params)`.

  Keys are `text_model.embeddings...` (published SD checkpoints,
  transformers 4) or `embeddings...` (what transformers 5 saves). A missing
  key, a wrong shape or an unexpected encoder key is a UserError naming it;
  embeddings.position_ids and keys outside the text model (a projection)
  are ignored."""
  template = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  prefix = ('text_model.' if any(k.startswith('text_model.' + PARTS[0])
                                 for k in tensors) else '')
  used = set()

  def convert(path, like):
    name, transpose = _hf_name(path)
    key = prefix + name
    if key not in tensors:
      raise UserError(f'the text encoder weights lack {key}')
    a = np.asarray(tensors[key])
    want = tuple(like.shape[::-1]) if transpose else tuple(like.shape)
    if a.shape != want:
      raise UserError(f'{key} has shape {list(a.shape)}; the config implies '
                      f'{list(want)}')
    used.add(key)
    return jnp.asarray(a.T if transpose else a, dtype=like.dtype)

  params = jax.tree_util.tree_map_with_path(
      lambda p, x: convert(tuple(getattr(k, 'key', getattr(k, 'idx', k))
                                 for k in p), x), template)
  extra = sorted(k for k in tensors
                 if k.startswith(tuple(prefix + p for p in PARTS))
                 and k not in used
                 and k != prefix + 'embeddings.position_ids')
  if extra:
    raise UserError(f'the text encoder weights hold {extra[0]}, which the '
                    'config does not describe (more layers than '
                    'num_hidden_layers?)')
  return params
