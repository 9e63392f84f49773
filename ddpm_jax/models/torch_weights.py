"""What Stable Diffusion's networks share when built from published
weights: `Keys` (fast abstract builds) and `map_tensors`, the map from
PyTorch tensors (named by diffusers or transformers) onto our parameters."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx

from ddpm_jax.errors import UserError


class Keys:
  """Stands in for nnx.Rngs when building (`rngs=Keys(seed)`): `params()`
  gives a fresh key without updating an nnx counter variable. Under
  nnx.eval_shape each such update makes JAX search the whole trace so far
  (SD 1.5's abstract UNet: 7.6 s with nnx.Rngs, 0.6 s with Keys)."""

  def __init__(self, seed: int = 0):
    self.seed, self.count = seed, 0

  def params(self) -> jax.Array:
    self.count += 1
    return jax.random.fold_in(jax.random.key(self.seed), self.count)


def _count(keys: list) -> str:
  return f'{len(keys)} tensor{"s" if len(keys) != 1 else ""}'


def _torch_shape(ours: tuple[int, ...], n: int) -> tuple[int, ...]:
  """The shape of one of n diffusers tensors that make our leaf."""
  if len(ours) == 4:   # [kh, kw, I, O] <- [O, I, kh, kw]
    return (ours[3] // n, ours[2], ours[0], ours[1])
  if len(ours) == 2:   # [I, O] <- [O, I]
    return (ours[1] // n, ours[0])
  return (ours[0] // n,) + tuple(ours[1:])


def _convert(w: np.ndarray, rank: int) -> np.ndarray:
  w = np.asarray(w, np.float32)
  if rank == 4:
    return np.transpose(w, (2, 3, 1, 0))
  if rank == 2:
    return (w[:, :, 0, 0] if w.ndim == 4 else w).T
  return w


def map_tensors(tensors: dict[str, np.ndarray], model: nnx.Module,
                sources: Callable[[str], list[str]]) -> dict:
  """Our parameters (a pure dict shaped as the model's nnx.Param state) from
  diffusers' tensors, our module path -> diffusers names by `sources`. A
  missing, unused or misshapen tensor is one UserError."""
  abstract = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
  key = lambda p: '/'.join(str(getattr(k, 'key', k)) for k in p)
  plan = {}
  for p, leaf in leaves:
    module, kind = key(p).rsplit('/', 1)
    suffix = 'bias' if kind == 'bias' else 'weight'
    plan[key(p)] = [f'{s}.{suffix}' for s in sources(module)]
  wanted = [k for names in plan.values() for k in names]
  missing = [k for k in wanted if k not in tensors]
  if missing:
    raise UserError(f'the weights lack {_count(missing)} the config needs '
                    f'(e.g. {missing[0]}); is config.json the right one?')
  extra = sorted(set(tensors) - set(wanted))
  if extra:
    raise UserError(f'the weights have {_count(extra)} this config does '
                    f'not use (e.g. {extra[0]}); is config.json the right one?')
  values = []
  for p, leaf in leaves:
    names, shape = plan[key(p)], tuple(leaf.shape)
    need = _torch_shape(shape, len(names))
    parts = []
    for k in names:
      w = tensors[k]
      got = tuple(w.shape)
      if got != need and not (len(need) == 2 and got == need + (1, 1)):
        raise UserError(f'tensor {k} has shape {list(got)}, the model needs '
                        f'{list(need)}')
      parts.append(_convert(w, len(shape)))
    values.append(parts[0] if len(parts) == 1 else
                  np.concatenate(parts, axis=-1))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract),
                                      values)


def random_params(model: nnx.Module, seed: int = 0) -> nnx.Module:
  """`model` (abstract or not) with random parameters drawn by NumPy
  (kernels N(0, 1/fan_in), norm scales 1, biases 0): no JAX op (or
  compile) per parameter."""
  rng = np.random.default_rng(seed)

  def init(path, leaf):
    kind = str(getattr(path[-1], 'key', path[-1]))
    if kind == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.standard_normal(leaf.shape, np.float32) / np.float32(np.sqrt(fan_in))
    return (np.ones if kind == 'scale' else np.zeros)(leaf.shape, np.float32)
  params = jax.tree_util.tree_map_with_path(
      init, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return nnx.merge(nnx.split(model, nnx.Param)[0], params)
