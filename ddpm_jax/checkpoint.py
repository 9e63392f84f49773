"""Every Orbax call of the project: save, list and restore checkpoints.

A checkpoint at step s has two items:
- `state`: a dict of arrays {step, params, ema_params, opt_state, rng};
- `meta`: JSON with the whole config and the step, so a checkpoint alone
  rebuilds the model.

Training restores the whole state; inference restores one parameter tree
(`restore_params`, an Orbax partial restore) and never reads the optimizer.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax.errors import UserError, describe
from ddpm_jax import files
from ddpm_jax.files import require_utf8

# What Orbax and TensorStore raise for a checkpoint that is truncated, has the
# wrong shapes or is missing files; anything else is a bug and keeps its
# traceback.
_READ_ERRORS = (ValueError, KeyError, OSError, TypeError)


class CheckpointError(UserError):
  """A missing, unreadable or mismatched checkpoint; one line for the user."""


class DamagedCheckpoint(CheckpointError):
  """A step whose files cannot be read (truncated, missing or corrupt)."""

  def __init__(self, step: int, directory: str, reason: str):
    super().__init__(f'checkpoint {step} in {directory} is damaged: {reason}')
    self.step, self.reason = step, reason


def _read_failure(e: BaseException) -> BaseException | None:
  """The TensorStore or file error behind `e`, if `e` is (or wraps) one:
  Orbax re-raises an unreadable array's ValueError as a bare Exception."""
  while e is not None:
    if isinstance(e, _READ_ERRORS):
      return e
    e = e.__cause__
  return None


class _QuietStderr:
  """Captures file descriptor 2 while Orbax reads. When a read fails, its
  sibling reads still finish on TensorStore's threads and each prints a
  `RuntimeError: Event loop is closed` traceback, and their coroutines
  report again when collected. After a failure, `settle()` (called once the
  exception is dropped) collects them and waits for the threads to go
  quiet; that output is dropped, and the failure is the caller's one line.
  Without a failure the output is passed on."""

  def __enter__(self) -> '_QuietStderr':
    sys.stderr.flush()
    self._saved = os.dup(2)
    self._tmp = tempfile.TemporaryFile()
    os.dup2(self._tmp.fileno(), 2)
    self._drop = False
    return self

  def settle(self) -> None:
    self._drop = True
    size, quiet_since, t0 = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() - t0 < 10:
      gc.collect()
      time.sleep(0.05)
      now = os.fstat(self._tmp.fileno()).st_size
      if now != size:
        size, quiet_since = now, time.monotonic()

  def __exit__(self, *exc) -> None:
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    with self._tmp:
      if not self._drop:
        self._tmp.seek(0)
        passed = self._tmp.read()
        if passed:
          os.write(2, passed)


class Checkpointer:
  """Checkpoints under `<workdir>/checkpoints`, keeping the last `keep`."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    require_utf8(workdir, 'workdir')
    self.directory = files.absolute(files.join(workdir, 'checkpoints'))
    if read_only and not files.isdir(self.directory):
      raise CheckpointError(f'no checkpoint found in {workdir} (no '
                            f'{self.directory} directory)')
    # A reader never saves, so it needs no Orbax read_only mode, which logs
    # two warnings on every open; it only must not create or delete anything.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        cleanup_tmp_directories=False,
        enable_async_checkpointing=not read_only)
    self.read_only = read_only
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _read(self, step: int, read: Callable[[], Any]) -> Any:
    """read(), where a file or TensorStore error (however Orbax wraps it)
    becomes one DamagedCheckpoint and no thread prints a traceback."""
    with _QuietStderr() as quiet:
      try:
        return read()
      except Exception as e:  # pylint: disable=broad-except
        cause = _read_failure(e)
        if cause is None:
          raise
        reason = describe(cause)
        del e, cause  # frees the failed reads' coroutines for settle()
      quiet.settle()
    raise DamagedCheckpoint(step, self.directory, reason)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict[str, Any], meta: dict) -> None:
    """Starts an asynchronous save of `state` (a dict of arrays) and `meta`."""
    if self.read_only:
      raise RuntimeError('a Checkpointer opened read_only cannot save')
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state),
          meta=ocp.args.JsonSave({**meta, 'step': step})), force=True)
    except OSError as e:  # full disk, lost permissions, ...
      raise CheckpointError(f'saving checkpoint {step} in {self.directory} '
                            f'failed: {describe(e)}; earlier checkpoints are '
                            'intact') from e

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except OSError as e:  # an asynchronous write that failed
      raise CheckpointError(f'writing a checkpoint in {self.directory} '
                            f'failed: {describe(e)}; earlier checkpoints are '
                            'intact') from e

  def close(self) -> None:
    self.manager.close()

  def resolve(self, step: int | None) -> int:
    """`step`, or the latest when None; raises if there is no such step."""
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
    step = self.resolve(step)
    meta = self._read(step, lambda: self.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    if not isinstance(meta, dict) or 'config' not in meta:
      raise DamagedCheckpoint(step, self.directory, 'it has no config metadata')
    return step, meta

  def newest_readable(self, read: Callable[[int], Any], warn: bool = True,
                      at_most: int | None = None) -> tuple[int, Any]:
    """(step, read(step)) for the newest step (at most `at_most`) that
    `read` can read; each damaged newer step is skipped, with a warning
    unless `warn` is False (readers leave it in place: the trainer sets it
    aside)."""
    steps = [s for s in self.all_steps() if at_most is None or s <= at_most]
    for step in reversed(steps):
      try:
        return step, read(step)
      except DamagedCheckpoint as e:
        if warn:
          warnings.warn(f'{e}; using the checkpoint before it')
    raise CheckpointError(f'no readable checkpoint in {self.directory}'
                          + (f' at or before step {at_most}' if at_most is not None else '')
                          if steps else f'no checkpoint found in {self.directory}')

  def set_aside(self, step: int) -> str:
    """Moves a damaged step out of the checkpoints (never deletes it), to
    <workdir>/damaged_checkpoints/<step>[.n]; returns where it went."""
    parent = files.join(os.path.dirname(self.directory.rstrip('/')),
                        'damaged_checkpoints')
    target, n = files.join(parent, str(step)), 1
    while files.exists(target):
      target, n = files.join(parent, f'{step}.{n}'), n + 1
    files.move_tree(files.join(self.directory, str(step)), target)
    self.manager.reload()
    return target

  def restore(self, step: int, target: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
    """The whole state, shaped like `target` (arrays or shape structs),
    replicated over `mesh`."""
    return self._restore(step, _replicated_abstract(target, mesh))

  def restore_params(self, step: int, name: str, target: Any, mesh: Mesh) -> Any:
    """Only `state[name]` (e.g. 'ema_params'), shaped like `target`: a
    partial restore that reads no other array of the checkpoint."""
    abstract = {name: _replicated_abstract(target, mesh)}
    return self._restore(step, abstract, partial=True)[name]

  def _check_shapes(self, step: int, abstract: Any) -> None:
    """Compares the stored shapes with the model's before reading any array:
    a restore that fails half-way leaves Orbax's threads printing tracebacks."""
    stored = self._read(step, lambda: _shapes(
        self.manager.item_metadata(step)['state'].tree))
    for path, shape in _shapes(abstract).items():
      if path not in stored:
        raise CheckpointError(f'checkpoint {step} in {self.directory} does not '
                              f'match the model: it has no array {path}')
      if stored[path] != shape:
        raise CheckpointError(f'checkpoint {step} in {self.directory} does not '
                              f'match the model: {path} is {stored[path]} there, '
                              f'the model needs {shape}')

  def _restore(self, step: int, abstract: Any, partial: bool = False) -> dict[str, Any]:
    self._check_shapes(step, abstract)
    args = ocp.args.PyTreeRestore(
        item=abstract, partial_restore=partial,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
    return self._read(step, lambda: self.manager.restore(
        step, args=ocp.args.Composite(state=args)).state)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'a/b/0/c' → shape, for every array of a tree (dicts, lists, tuples,
  namedtuples and their stored forms name their children alike)."""
  def name(k):
    for attr in ('key', 'idx', 'name'):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(name(k) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _replicated_abstract(target: Any, mesh: Mesh) -> Any:
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      target)
