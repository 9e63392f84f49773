"""Layers shared by the UNet, the autoencoder and the text encoder, and the
helpers every network uses to split, shape and count its parameters."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

default_init = nnx.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
zero_init = nnx.initializers.zeros_init()


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class GroupNorm(nnx.GroupNorm):
  """nnx.GroupNorm's parameters, computed as one per-channel reduction over
  H×W (channels stay contiguous) and one scale-and-shift pass: about 3× faster
  than nnx.GroupNorm on CPU, the same within float32 rounding."""

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    B, H, W, C = x_BHWC.shape
    G = self.num_groups
    x = x_BHWC.astype(jnp.float32)
    s1_BC, s2_BC = x.sum((1, 2)), jnp.square(x).sum((1, 2))
    n = H * W * (C // G)
    mean_BG = s1_BC.reshape(B, G, -1).sum(-1) / n
    var_BG = jnp.maximum(s2_BC.reshape(B, G, -1).sum(-1) / n - mean_BG ** 2, 0.0)
    inv_BC = jnp.repeat(jax.lax.rsqrt(var_BG + self.epsilon), C // G, axis=1)
    a_BC = inv_BC * self.scale[...]
    b_BC = self.bias[...] - jnp.repeat(mean_BG, C // G, axis=1) * a_BC
    y = x * a_BC[:, None, None, :] + b_BC[:, None, None, :]
    return y.astype(self.dtype or x_BHWC.dtype)


class ResBlock(nnx.Module):
  """GroupNorm → SiLU → conv, + time embedding, GroupNorm → SiLU → dropout → conv.
  `temb_dim` 0: no time embedding (the autoencoder's blocks)."""

  def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float,
               groups: int, dtype, *, eps: float = 1e-6, rngs: nnx.Rngs):
    self.norm1 = GroupNorm(cin, groups, epsilon=eps, dtype=dtype, rngs=rngs)
    self.conv1 = nnx.Conv(cin, cout, (3, 3), kernel_init=default_init,
                          dtype=dtype, rngs=rngs)
    self.temb_proj = (nnx.Linear(temb_dim, cout, kernel_init=default_init,
                                 dtype=dtype, rngs=rngs) if temb_dim else None)
    self.norm2 = GroupNorm(cout, groups, epsilon=eps, dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), kernel_init=zero_init,
                          dtype=dtype, rngs=rngs)
    self.skip = (nnx.Linear(cin, cout, kernel_init=default_init, dtype=dtype,
                            rngs=rngs) if cin != cout else None)
    self.dropout = dropout

  def __call__(self, x, temb, key):
    h = self.conv1(nnx.silu(self.norm1(x)))
    if self.temb_proj is not None:
      h = h + self.temb_proj(nnx.silu(temb))[:, None, None, :]
    h = dropout(nnx.silu(self.norm2(h)), self.dropout, key)
    h = self.conv2(h)
    if self.skip is not None:
      x = self.skip(x)
    return x + h


class AttnBlock(nnx.Module):
  """Spatial self-attention with a residual connection: one head (the
  paper's), or heads of `head_dim` channels (contiguous channel groups, as
  diffusers splits them)."""

  def __init__(self, ch: int, groups: int, dtype, *, eps: float = 1e-6,
               head_dim: int = 0, rngs: nnx.Rngs):
    self.norm = GroupNorm(ch, groups, epsilon=eps, dtype=dtype, rngs=rngs)
    self.heads = ch // head_dim if head_dim else 1
    self.qkv = nnx.Linear(ch, 3 * ch, kernel_init=default_init, dtype=dtype,
                          rngs=rngs)
    self.proj = nnx.Linear(ch, ch, kernel_init=zero_init, dtype=dtype,
                           rngs=rngs)

  def __call__(self, x):
    B, H, W, C = x.shape
    q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(B, H * W, 3 * C), 3, -1)
    n = self.heads
    if n == 1:   # the paper's single head (kept as it was: same numbers)
      w = jnp.einsum('bqc,bkc->bqk', q, k) * (C ** -0.5)
      w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
      h = jnp.einsum('bqk,bkc->bqc', w, v).reshape(B, H, W, C)
      return x + self.proj(h)
    q, k, v = (a.reshape(B, H * W, n, C // n) for a in (q, k, v))
    w = jnp.einsum('bqnc,bknc->bnqk', q, k) * ((C // n) ** -0.5)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
    h = jnp.einsum('bnqk,bknc->bqnc', w, v).reshape(B, H, W, C)
    return x + self.proj(h)


class Downsample(nnx.Module):
  """A 3×3 conv of stride 2. `padding` 0: 'SAME', which on the even sizes a
  UNet takes is one row and column after the image (the paper's, and
  diffusers' downsample_padding=0); 1: one on every side (diffusers'
  downsample_padding=1)."""

  def __init__(self, ch: int, dtype, *, padding: int = 0, rngs: nnx.Rngs):
    self.conv = nnx.Conv(ch, ch, (3, 3), strides=2, kernel_init=default_init,
                         padding='SAME' if padding == 0 else ((1, 1), (1, 1)),
                         dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour ×2 upsampling followed by a 3×3 conv."""

  def __init__(self, ch: int, dtype, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(ch, ch, (3, 3), kernel_init=default_init,
                         dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return self.conv(x)


class Attention(nnx.Module):
  """Multi-head attention of queries x [B, Q, C] over a context [B, K, D]
  (x itself for self-attention); keys where `mask_BK` is False get no
  weight at all."""

  def __init__(self, dim: int, context_dim: int, heads: int, dtype, *,
               rngs: nnx.Rngs):
    self.heads = heads
    self.q = nnx.Linear(dim, dim, use_bias=False, kernel_init=default_init,
                        dtype=dtype, rngs=rngs)
    self.kv = nnx.Linear(context_dim, 2 * dim, use_bias=False,
                         kernel_init=default_init, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(dim, dim, kernel_init=default_init, dtype=dtype,
                          rngs=rngs)

  def __call__(self, x_BQC, context_BKD, mask_BK=None):
    B, Q, C = x_BQC.shape
    n = self.heads
    q = self.q(x_BQC).reshape(B, Q, n, C // n)
    k, v = jnp.split(self.kv(context_BKD), 2, axis=-1)
    k = k.reshape(B, -1, n, C // n)
    v = v.reshape(B, -1, n, C // n)
    logits = jnp.einsum('bqhc,bkhc->bhqk', q, k).astype(jnp.float32)
    logits = logits * (C // n) ** -0.5
    if mask_BK is not None:
      logits = jnp.where(mask_BK[:, None, None, :], logits, -1e30)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum('bhqk,bkhc->bqhc', w, v).reshape(B, Q, C)
    return self.out(h)


class FeedForward(nnx.Module):
  def __init__(self, dim: int, mult: int, dtype, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, mult * dim, kernel_init=default_init,
                          dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(mult * dim, dim, kernel_init=default_init,
                          dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x)))




def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params): the networks hold only nnx.Param state."""
  return nnx.split(model, nnx.Param)


def abstract_params(build: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, Any]:
  """The graphdef and the parameter shapes (a pure dict of ShapeDtypeStructs)
  of the network `build()` makes, with no array allocated."""
  graphdef, state = split_params(nnx.eval_shape(build))
  return graphdef, nnx.to_pure_dict(state)


def count_params(params: Any) -> int:
  """The number of values in a parameter tree (arrays or shape structs)."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
