"""diffusers' UNet2DConditionModel, as Stable Diffusion 1.x and 2.x use it
(text-to-image, v-prediction and 9-channel inpainting UNets), in Flax NNX.

The module tree follows diffusers' names (down_blocks/1/attentions/0/...),
so `params_from_diffusers` maps a checkpoint's tensors by name (the
ResBlock it reuses from `layers` renames two: time_emb_proj -> temb_proj,
conv_shortcut -> skip). Any config field SD 1.x/2.x do not use is refused
by `check_config` with one line (an SDXL UNet, say); blocks are generic
(per-block heads, cross-attention width and transformer depth), so SDXL's
added embeddings would be new modules, not a rewrite.

Images are channels-last: x_BHWC, t_B, ctx_BLD (the text encoder's hidden
states) in, eps/v_BHWC (float32) out. `dtype` is the compute dtype; norm
statistics and attention logits stay float32 (so `upcast_attention` is
always honoured).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ddpm_jax.errors import UserError
from ddpm_jax.models.torch_weights import Keys, map_tensors, random_params
from ddpm_jax.models.layers import GroupNorm, ResBlock, default_init

_DOWN = ('CrossAttnDownBlock2D', 'DownBlock2D')
_UP = ('CrossAttnUpBlock2D', 'UpBlock2D')
# field: (allowed values, default); a config without the field has the default.
_FIXED: dict[str, tuple[tuple, Any]] = {
    'mid_block_type': (('UNetMidBlock2DCrossAttn',), 'UNetMidBlock2DCrossAttn'),
    'center_input_sample': ((False,), False),
    'act_fn': (('silu', 'swish'), 'silu'),
    'mid_block_scale_factor': ((1, 1.0), 1),
    'dual_cross_attention': ((False,), False),
    'class_embed_type': ((None,), None),
    'num_class_embeds': ((None,), None),
    'addition_time_embed_dim': ((None,), None),
    'projection_class_embeddings_input_dim': ((None,), None),
    'class_embeddings_concat': ((False,), False),
    'encoder_hid_dim': ((None,), None),
    'encoder_hid_dim_type': ((None,), None),
    'num_attention_heads': ((None,), None),
    'reverse_transformer_layers_per_block': ((None,), None),
    'resnet_time_scale_shift': (('default',), 'default'),
    'resnet_skip_time_act': ((False,), False),
    'resnet_out_scale_factor': ((1, 1.0), 1.0),
    'time_embedding_type': (('positional',), 'positional'),
    'time_embedding_dim': ((None,), None),
    'time_embedding_act_fn': ((None,), None),
    'timestep_post_act': ((None,), None),
    'time_cond_proj_dim': ((None,), None),
    'conv_in_kernel': ((3,), 3),
    'conv_out_kernel': ((3,), 3),
    'attention_type': (('default',), 'default'),
    'mid_block_only_cross_attention': ((None, False), None),
    'cross_attention_norm': ((None,), None),
}


def _refuse(field: str, value: Any, why: str = '') -> UserError:
  return UserError(f'unet config.json: {field}={value!r} is not supported'
                   f'{": " + why if why else ""}')


def _per_block(cfg: dict, field: str, default, n: int) -> list:
  """A field given as one value or one per down block, as n values."""
  v = cfg.get(field, default)
  if isinstance(v, (list, tuple)):
    if len(v) != n or not all(isinstance(x, int) and not isinstance(x, bool)
                              for x in v):
      raise _refuse(field, v, f'one int, or one per down block ({n})')
    return list(v)
  if not isinstance(v, int) or isinstance(v, bool):
    raise _refuse(field, v, 'an int or a list of ints')
  return [v] * n


def check_config(cfg: dict) -> dict:
  """The UNet's structure (per-block lists) from a diffusers
  UNet2DConditionModel config; a field SD 1.x/2.x do not use is one
  UserError naming it. Fields diffusers itself does not know are ignored,
  as diffusers ignores them."""
  name = cfg.get('_class_name', 'UNet2DConditionModel')
  if name != 'UNet2DConditionModel':
    raise UserError(f'unet config.json describes a {name}, not a '
                    'UNet2DConditionModel')
  add = cfg.get('addition_embed_type')
  if add is not None:
    raise _refuse('addition_embed_type', add, 'SDXL UNets are not supported yet'
                  if add == 'text_time' else 'only SD 1.x/2.x UNets are')
  for field, (allowed, default) in _FIXED.items():
    v = cfg.get(field, default)
    if v not in allowed:
      raise _refuse(field, v, f'only {allowed[0]!r}')
  down = list(cfg.get('down_block_types', ('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',)))
  up = list(cfg.get('up_block_types', ('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3))
  for field, types, allowed in (('down_block_types', down, _DOWN),
                                ('up_block_types', up, _UP)):
    for t in types:
      if t not in allowed:
        raise _refuse(field, types, f'{t} is none of {list(allowed)}')
  widths = list(cfg.get('block_out_channels', (320, 640, 1280, 1280)))
  n = len(widths)
  if len(down) != n or len(up) != n:
    raise _refuse('down_block_types', down, f'down_block_types, up_block_types '
                  f'and block_out_channels ({n}) need one entry per level')
  only = cfg.get('only_cross_attention', False)
  if only is not False and (not isinstance(only, (list, tuple)) or any(only)):
    raise _refuse('only_cross_attention', only, 'only False')
  groups = cfg.get('norm_num_groups', 32)
  if not isinstance(groups, int) or any(w % groups for w in widths):
    raise _refuse('norm_num_groups', groups,
                  'every block_out_channels entry must be a multiple of it')
  tlayers = cfg.get('transformer_layers_per_block', 1)
  if isinstance(tlayers, (list, tuple)) and any(isinstance(x, (list, tuple)) for x in tlayers):
    raise _refuse('transformer_layers_per_block', tlayers, 'one int per block')
  heads = _per_block(cfg, 'attention_head_dim', 8, n)
  if any(h <= 0 for h in heads):
    raise _refuse('attention_head_dim', cfg.get('attention_head_dim'),
                  'it is the number of heads, at least 1')
  return dict(
      in_channels=int(cfg.get('in_channels', 4)),
      out_channels=int(cfg.get('out_channels', 4)),
      widths=widths, down=down, up=up,
      layers=_per_block(cfg, 'layers_per_block', 2, n),
      transformer_layers=_per_block(cfg, 'transformer_layers_per_block', 1, n),
      heads=heads,   # diffusers' attention_head_dim is the number of heads
      cross_dim=_per_block(cfg, 'cross_attention_dim', 1280, n),
      groups=groups, eps=float(cfg.get('norm_eps', 1e-5)),
      downsample_padding=int(cfg.get('downsample_padding', 1)),
      flip_sin_to_cos=bool(cfg.get('flip_sin_to_cos', True)),
      freq_shift=float(cfg.get('freq_shift', 0)))


def timestep_embedding(t_B: jax.Array, dim: int, flip_sin_to_cos: bool,
                       freq_shift: float) -> jax.Array:
  """diffusers' `get_timestep_embedding` (float32): [sin, cos] of t times
  10000^(-k / (dim/2 - freq_shift)), or [cos, sin] if flipped."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32)
                  / (half - freq_shift))
  args = t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _conv(cin: int, cout: int, dtype, rngs, **kw) -> nnx.Conv:
  return nnx.Conv(cin, cout, (3, 3), kernel_init=default_init, dtype=dtype,
                  rngs=rngs, **kw)


def _linear(cin: int, cout: int, dtype, rngs) -> nnx.Linear:
  return nnx.Linear(cin, cout, kernel_init=default_init, dtype=dtype, rngs=rngs)


class Downsample2D(nnx.Module):
  """A stride-2 3×3 conv: `padding` p > 0 pads p on every side; 0 pads one
  row and column after the image (diffusers' asymmetric (0, 1, 0, 1))."""

  def __init__(self, ch: int, padding: int, dtype, *, rngs: nnx.Rngs):
    pad = ((padding, padding),) * 2 if padding else ((0, 1), (0, 1))
    self.conv = _conv(ch, ch, dtype, rngs, strides=2, padding=pad)

  def __call__(self, x_BHWC):
    return self.conv(x_BHWC)


def nearest_resize(x_BHWC: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torch's F.interpolate(mode='nearest') to `size` (H, W): source index
  floor(i * in / out); ×2 is a repeat."""
  B, H, W, C = x_BHWC.shape
  if size == (2 * H, 2 * W):
    return jnp.repeat(jnp.repeat(x_BHWC, 2, axis=1), 2, axis=2)

  def index(n_in, n_out):
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale)
                      .astype(np.int32), n_in - 1)
  return x_BHWC[:, index(H, size[0])][:, :, index(W, size[1])]


class Upsample2D(nnx.Module):
  """Nearest-neighbour upsampling (×2, or to `size`), then a 3×3 conv."""

  def __init__(self, ch: int, dtype, *, rngs: nnx.Rngs):
    self.conv = _conv(ch, ch, dtype, rngs)

  def __call__(self, x_BHWC, size: tuple[int, int] | None = None):
    B, H, W, C = x_BHWC.shape
    return self.conv(nearest_resize(x_BHWC, size or (2 * H, 2 * W)))


class Attention(nnx.Module):
  """diffusers' Attention as SD's transformer blocks use it: heads of
  contiguous channel groups, to_q/to_k/to_v without bias, to_out with.
  The logits are always computed and normalised in float32 (diffusers'
  `upcast_attention`, which SD 2.1 sets, at no cost in float32)."""

  def __init__(self, dim: int, context_dim: int, heads: int, dtype, *,
               rngs: nnx.Rngs):
    self.heads = heads
    lin = lambda cin: nnx.Linear(cin, dim, use_bias=False, dtype=dtype,
                                 kernel_init=default_init, rngs=rngs)
    self.to_q, self.to_k, self.to_v = lin(dim), lin(context_dim), lin(context_dim)
    self.to_out = _linear(dim, dim, dtype, rngs)

  def __call__(self, x_BQC, ctx_BKD):
    B, Q, C = x_BQC.shape
    n = self.heads
    # heads leading: XLA's CPU dot is several times faster on [B, h, L, c]
    # than on the [B, L, h, c] layout (measured on SD's tiny test UNet)
    split = lambda a: a.reshape(B, -1, n, C // n).transpose(0, 2, 1, 3)
    q, k, v = split(self.to_q(x_BQC)), split(self.to_k(ctx_BKD)), split(self.to_v(ctx_BKD))
    logits = jnp.einsum('bhqc,bhkc->bhqk', q, k,
                        preferred_element_type=jnp.float32)
    w = jax.nn.softmax(logits * (C // n) ** -0.5, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bhkc->bhqc', w, v).transpose(0, 2, 1, 3)
    return self.to_out(out.reshape(B, Q, C))


class GEGLUFeedForward(nnx.Module):
  """diffusers' FeedForward(activation_fn='geglu'): proj to 2×inner, the
  first half times the exact (erf) GELU of the second, back to `dim`."""

  def __init__(self, dim: int, dtype, *, mult: int = 4, rngs: nnx.Rngs):
    self.proj = _linear(dim, 2 * mult * dim, dtype, rngs)
    self.out = _linear(mult * dim, dim, dtype, rngs)

  def __call__(self, x):
    h, gate = jnp.split(self.proj(x), 2, axis=-1)
    return self.out(h * jax.nn.gelu(gate, approximate=False))


class BasicTransformerBlock(nnx.Module):
  """LayerNorm → self-attention, LayerNorm → cross-attention over the
  context, LayerNorm → GEGLU feed-forward, each with a residual."""

  def __init__(self, dim: int, heads: int, context_dim: int, dtype, *,
               rngs: nnx.Rngs):
    ln = lambda: nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.norm1, self.attn1 = ln(), Attention(dim, dim, heads, dtype, rngs=rngs)
    self.norm2 = ln()
    self.attn2 = Attention(dim, context_dim, heads, dtype, rngs=rngs)
    self.norm3, self.ff = ln(), GEGLUFeedForward(dim, dtype, rngs=rngs)

  def __call__(self, h_BLC, ctx_BKD):
    n = self.norm1(h_BLC)
    h_BLC = h_BLC + self.attn1(n, n)
    h_BLC = h_BLC + self.attn2(self.norm2(h_BLC), ctx_BKD)
    return h_BLC + self.ff(self.norm3(h_BLC))


class Transformer2D(nnx.Module):
  """diffusers' Transformer2DModel over continuous inputs: GroupNorm,
  proj_in, `layers` BasicTransformerBlocks over the H×W tokens, proj_out,
  + the input. proj_in/out are Linears: a checkpoint's 1×1 convs (SD 1.x,
  use_linear_projection false) are the same map."""

  def __init__(self, ch: int, heads: int, context_dim: int, layers: int,
               groups: int, dtype, *, rngs: nnx.Rngs):
    inner = heads * (ch // heads)
    self.norm = GroupNorm(ch, groups, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.proj_in = _linear(ch, inner, dtype, rngs)
    self.transformer_blocks = nnx.List([
        BasicTransformerBlock(inner, heads, context_dim, dtype, rngs=rngs)
        for _ in range(layers)])
    self.proj_out = _linear(inner, ch, dtype, rngs)

  def __call__(self, x_BHWC, ctx_BKD):
    B, H, W, C = x_BHWC.shape
    h = self.proj_in(self.norm(x_BHWC).reshape(B, H * W, C))
    for blk in self.transformer_blocks:
      h = blk(h, ctx_BKD)
    return x_BHWC + self.proj_out(h).reshape(B, H, W, C)


class _Spec:
  """What every block needs: the time-embedding width, norms and dtype."""

  def __init__(self, temb: int, groups: int, eps: float, dtype):
    self.temb, self.groups, self.eps, self.dtype = temb, groups, eps, dtype

  def resnet(self, cin: int, cout: int, rngs) -> ResBlock:
    return ResBlock(cin, cout, self.temb, 0.0, self.groups, self.dtype,
                    eps=self.eps, rngs=rngs)

  def transformer(self, ch: int, heads: int, context_dim: int, layers: int,
                  rngs) -> Transformer2D:
    return Transformer2D(ch, heads, context_dim, layers, self.groups,
                         self.dtype, rngs=rngs)


class DownBlock(nnx.Module):
  """CrossAttnDownBlock2D (`cross`) or DownBlock2D: `layers` resnets, each
  followed by a Transformer2D if `cross`, then a Downsample2D unless last."""

  def __init__(self, spec: _Spec, cin: int, cout: int, layers: int, *,
               cross: bool, heads: int, context_dim: int, tlayers: int,
               downsample: bool, padding: int, rngs: nnx.Rngs):
    self.resnets = nnx.List([spec.resnet(cin if i == 0 else cout, cout, rngs)
                             for i in range(layers)])
    self.attentions = nnx.List([
        spec.transformer(cout, heads, context_dim, tlayers, rngs)
        for _ in range(layers)]) if cross else None
    self.downsamplers = nnx.List([Downsample2D(
        cout, padding, spec.dtype, rngs=rngs)]) if downsample else None

  def __call__(self, h, temb, ctx) -> tuple[jax.Array, list[jax.Array]]:
    skips = []
    for i, resnet in enumerate(self.resnets):
      h = resnet(h, temb, None)
      if self.attentions is not None:
        h = self.attentions[i](h, ctx)
      skips.append(h)
    if self.downsamplers is not None:
      h = self.downsamplers[0](h)
      skips.append(h)
    return h, skips


class MidBlock(nnx.Module):
  """UNetMidBlock2DCrossAttn: resnet, Transformer2D, resnet."""

  def __init__(self, spec: _Spec, ch: int, *, heads: int, context_dim: int,
               tlayers: int, rngs: nnx.Rngs):
    self.resnets = nnx.List([spec.resnet(ch, ch, rngs) for _ in range(2)])
    self.attentions = nnx.List([
        spec.transformer(ch, heads, context_dim, tlayers, rngs)])

  def __call__(self, h, temb, ctx):
    h = self.resnets[0](h, temb, None)
    return self.resnets[1](self.attentions[0](h, ctx), temb, None)


class UpBlock(nnx.Module):
  """CrossAttnUpBlock2D (`cross`) or UpBlock2D: `layers` resnets over the
  input concatenated with a skip (the last skip first), each followed by a
  Transformer2D if `cross`, then an Upsample2D unless last."""

  def __init__(self, spec: _Spec, skip_chs: Sequence[int], cprev: int,
               cout: int, *, cross: bool, heads: int, context_dim: int,
               tlayers: int, upsample: bool, rngs: nnx.Rngs):
    self.resnets = nnx.List([
        spec.resnet((cprev if i == 0 else cout) + s, cout, rngs)
        for i, s in enumerate(skip_chs)])
    self.attentions = nnx.List([
        spec.transformer(cout, heads, context_dim, tlayers, rngs)
        for _ in skip_chs]) if cross else None
    self.upsamplers = nnx.List([
        Upsample2D(cout, spec.dtype, rngs=rngs)]) if upsample else None

  def __call__(self, h, skips: list[jax.Array], temb, ctx,
               size: tuple[int, int] | None):
    for i, resnet in enumerate(self.resnets):
      h = resnet(jnp.concatenate([h, skips.pop()], axis=-1), temb, None)
      if self.attentions is not None:
        h = self.attentions[i](h, ctx)
    if self.upsamplers is not None:
      h = self.upsamplers[0](h, size)
    return h


class TimestepEmbedding(nnx.Module):
  def __init__(self, cin: int, dim: int, dtype, *, rngs: nnx.Rngs):
    self.linear_1 = _linear(cin, dim, dtype, rngs)
    self.linear_2 = _linear(dim, dim, dtype, rngs)

  def __call__(self, e):
    return self.linear_2(nnx.silu(self.linear_1(e)))


class UNet2DCondition(nnx.Module):
  """diffusers' UNet2DConditionModel for SD 1.x/2.x, built from its
  config.json dict (see `check_config`)."""

  def __init__(self, cfg: dict, *, dtype: Any = 'float32', rngs: nnx.Rngs):
    s = check_config(cfg)
    dtype = jnp.dtype(dtype)
    self.dtype = dtype
    self.flip_sin_to_cos, self.freq_shift = s['flip_sin_to_cos'], s['freq_shift']
    widths, n = s['widths'], len(s['widths'])
    self.temb_in = widths[0]
    temb = 4 * widths[0]
    spec = _Spec(temb, s['groups'], s['eps'], dtype)
    self.conv_in = _conv(s['in_channels'], widths[0], dtype, rngs)
    self.time_embedding = TimestepEmbedding(widths[0], temb, dtype, rngs=rngs)
    down, skip_chs, cur = [], [widths[0]], widths[0]
    for l, kind in enumerate(s['down']):
      down.append(DownBlock(
          spec, cur, widths[l], s['layers'][l], cross=kind == _DOWN[0],
          heads=s['heads'][l], context_dim=s['cross_dim'][l],
          tlayers=s['transformer_layers'][l], downsample=l != n - 1,
          padding=s['downsample_padding'], rngs=rngs))
      cur = widths[l]
      skip_chs += [cur] * (s['layers'][l] + (l != n - 1))
    self.down_blocks = nnx.List(down)
    self.mid_block = MidBlock(spec, cur, heads=s['heads'][-1],
                              context_dim=s['cross_dim'][-1],
                              tlayers=s['transformer_layers'][-1], rngs=rngs)
    up = []
    for u, kind in enumerate(s['up']):
      l = n - 1 - u
      k = s['layers'][l] + 1
      chs, skip_chs = skip_chs[-k:][::-1], skip_chs[:-k]
      up.append(UpBlock(
          spec, chs, cur, widths[l], cross=kind == _UP[0], heads=s['heads'][l],
          context_dim=s['cross_dim'][l], tlayers=s['transformer_layers'][l],
          upsample=u != n - 1, rngs=rngs))
      cur = widths[l]
    self.up_blocks = nnx.List(up)
    self.conv_norm_out = GroupNorm(widths[0], s['groups'], epsilon=s['eps'],
                                   dtype=dtype, rngs=rngs)
    self.conv_out = _conv(widths[0], s['out_channels'], dtype, rngs)

  @classmethod
  def from_config(cls, cfg: dict, dtype: Any = 'float32',
                  rngs: nnx.Rngs | None = None) -> 'UNet2DCondition':
    """The model of a diffusers config dict: with `rngs`, nnx's own
    initialisation (eager: slow at SD's size); without, `build_unet`'s."""
    return build_unet(cfg, dtype) if rngs is None else cls(cfg, dtype=dtype, rngs=rngs)

  def __call__(self, x_BHWC: jax.Array, t_B: jax.Array,
               ctx_BLD: jax.Array) -> jax.Array:
    """The prediction (eps or v, as the checkpoint was trained), float32.
    t_B: one timestep per image (or a scalar), float or int."""
    B = x_BHWC.shape[0]
    t_B = jnp.broadcast_to(jnp.asarray(t_B), (B,))
    e = timestep_embedding(t_B, self.temb_in, self.flip_sin_to_cos,
                           self.freq_shift)
    temb = self.time_embedding(e.astype(self.dtype))
    ctx = ctx_BLD.astype(self.dtype)
    h = self.conv_in(x_BHWC.astype(self.dtype))
    skips = [h]
    for blk in self.down_blocks:
      h, s = blk(h, temb, ctx)
      skips += s
    h = self.mid_block(h, temb, ctx)
    for blk in self.up_blocks:
      k = len(blk.resnets)
      mine, skips = skips[-k:], skips[:-k]
      # diffusers upsamples to the next skip's size (×2 unless it is odd)
      size = skips[-1].shape[1:3] if skips else None
      h = blk(h, mine, temb, ctx, size)
    h = self.conv_out(nnx.silu(self.conv_norm_out(h)))
    return h.astype(jnp.float32)


def abstract_unet(cfg: dict, dtype: Any = 'float32') -> UNet2DCondition:
  """The UNet with parameter shapes only (nothing allocated): what
  `params_from_diffusers` and a restore need; nnx.split(model, nnx.Param)
  gives its graphdef and shapes."""
  return nnx.eval_shape(lambda: UNet2DCondition(cfg, dtype=dtype, rngs=Keys(0)))


def build_unet(cfg: dict, dtype: Any = 'float32', seed: int = 0) -> UNet2DCondition:
  """A model with random parameters (torch_weights.random_params)."""
  return random_params(abstract_unet(cfg, dtype), seed)


ApplyFn = Callable[..., jax.Array]


def make_unet_apply(graphdef: nnx.GraphDef) -> ApplyFn:
  """apply(params, x_BHWC, t_B, ctx_BLD) -> out_BHWC, a pure function of
  the parameters (a pure dict or nnx.State) for jax.jit."""
  def apply(params, x_BHWC, t_B, ctx_BLD):
    return nnx.merge(graphdef, params)(x_BHWC, t_B, ctx_BLD)
  return apply


def unet_from_diffusers(cfg: dict, tensors: dict[str, np.ndarray],
                        dtype: Any = 'float32') -> tuple[nnx.GraphDef, dict]:
  """(graphdef, params) of a diffusers UNet: its config dict and tensors."""
  model = abstract_unet(cfg, dtype)
  return nnx.split(model, nnx.Param)[0], params_from_diffusers(tensors, model)


# --- diffusers' tensors -> our parameters ---------------------------------

_ATTN = {'to_out': ['to_out.0']}
_FF = {'proj': ['net.0.proj'], 'out': ['net.2']}
_RESNET = {'temb_proj': ['time_emb_proj'], 'skip': ['conv_shortcut']}


def _sources(module: str) -> list[str]:
  """The diffusers module name(s) our module (a '/' path) comes from; more
  than one are concatenated along the output axis."""
  *head, name = module.split('/')
  parent = head[-1] if head else ''
  if parent in ('attn1', 'attn2') and name in _ATTN:
    names = _ATTN[name]
  elif parent == 'ff' and name in _FF:
    names = _FF[name]
  elif len(head) >= 2 and head[-2] == 'resnets' and name in _RESNET:
    names = _RESNET[name]
  else:
    names = [name]
  return ['.'.join(head + [x]) for x in names]


def params_from_diffusers(tensors: dict[str, np.ndarray],
                          model: UNet2DCondition) -> dict:
  """Our parameters (a pure dict, the structure of
  nnx.to_pure_dict(nnx.state(model, nnx.Param))) from a diffusers
  UNet2DConditionModel's tensors; `model` may be abstract."""
  return map_tensors(tensors, model, _sources)
