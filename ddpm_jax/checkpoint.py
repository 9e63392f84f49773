"""Every Orbax call of the project: save, list and restore checkpoints.

A checkpoint at step s holds the whole train state (params, EMA params,
optimizer state, step, RNG key data) and a JSON item with the config and the
data-iterator position, so a checkpoint alone rebuilds the model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax.config import model_signature
from ddpm_jax.errors import UserError
from ddpm_jax.training import TrainState


class CheckpointError(UserError):
  """A missing, unreadable or mismatched checkpoint; one line for the user."""


def _to_saveable(state: TrainState) -> dict:
  return {'step': state.step, 'params': state.params,
          'ema_params': state.ema_params, 'opt_state': state.opt_state,
          'rng': jax.random.key_data(state.rng)}


class Checkpointer:
  """Checkpoints under `<workdir>/checkpoints`, keeping the last `keep`."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f'no checkpoint found in {workdir} (no '
                            f'{self.directory} directory)')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=('state', 'meta'))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, config, data_step: int,
           force: bool = True) -> None:
    step = int(jax.device_get(state.step))
    meta = {'config': json.loads(config.to_json()), 'data_step': data_step,
            'step': step}
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_to_saveable(state)),
          meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:  # full disk, lost permissions, ...
      raise CheckpointError(f'saving checkpoint {step} in {self.directory} '
                            f'failed: {_short(e)}; earlier checkpoints are '
                            'intact') from None

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # an asynchronous write that failed
      raise CheckpointError(f'writing a checkpoint in {self.directory} '
                            f'failed: {_short(e)}; earlier checkpoints are '
                            'intact') from None

  def close(self) -> None:
    self.manager.close()

  def _resolve(self, step: int | None) -> int:
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f'no checkpoint found in {self.directory}')
    if step is None:
      return steps[-1]
    if step not in steps:
      raise CheckpointError(f'no checkpoint for step {step} in {self.directory};'
                            f' available: {steps}')
    return step

  def read_meta(self, step: int | None = None) -> tuple[int, dict]:
    step = self._resolve(step)
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore())).meta
    except Exception as e:
      raise CheckpointError(f'checkpoint {step} in {self.directory} is '
                            f'unreadable: {_short(e)}') from None
    if not isinstance(meta, dict) or 'config' not in meta:
      raise CheckpointError(f'checkpoint {step} in {self.directory} has no '
                            'config metadata')
    return step, meta

  def restore(self, step: int, target: TrainState, mesh: Mesh) -> TrainState:
    """Restores into `target`'s structure, replicated over `mesh`."""
    replicated = NamedSharding(mesh, P())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(_to_saveable, target))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract))).state
    except Exception as e:
      raise CheckpointError(f'checkpoint {step} in {self.directory} is '
                            f'unreadable or does not match the model: '
                            f'{_short(e)}') from None
    return TrainState(step=restored['step'], params=restored['params'],
                      ema_params=restored['ema_params'],
                      opt_state=restored['opt_state'],
                      rng=jax.random.wrap_key_data(restored['rng']))


def _short(e: Exception) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:300]}'


def check_compatible(config, meta: dict, directory: str) -> None:
  """Raises if the checkpoint's model differs from the config's."""
  saved = model_signature(ml_collections.ConfigDict(meta['config']))
  current = model_signature(config)
  if saved != current:
    diffs = _diff(saved, current)
    raise CheckpointError(
        f'the checkpoint in {directory} was made with another model config '
        f'({"; ".join(diffs[:3])}); use a new --workdir or the same config')


def _diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f'{prefix}{k}.')
    return out
  return [] if a == b else [f'{prefix[:-1]}: checkpoint {a} vs config {b}']


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(meta['config'])
