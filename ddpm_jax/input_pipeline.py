"""The input pipeline: the batches of steps start..stop-1, computed ahead of
the train step by grain.

Each element is `Batches.batch(step)`, a pure function of the seed and the
step, so the order never depends on the number of workers or on timing:
resume and several hosts stay exact. With `workers` = 0 one thread of this
process prepares the next batches while the device computes; with workers
> 0 grain decodes in that many processes (each takes every workers-th step)
and hands the batches back in step order.
"""

from __future__ import annotations

import signal
import sys
from typing import Iterator

import grain

from ddpm_jax.data import Batches


def _worker_init(index: int, count: int) -> None:
  """In each grain worker: Ctrl-C and SIGTERM sent to the whole process
  group are the trainer's to handle (it saves, then closes the workers), and
  a worker ends with its trainer however the trainer ends (Linux)."""
  del index, count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  if sys.platform.startswith('linux'):
    import ctypes
    try:
      ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # no libc.so.6 (e.g. musl): workers may outlive a killed trainer
      pass


class BatchIterator:
  """Iterates the batches of steps [start, stop); `close()` ends grain's
  worker processes (a `with` block does it)."""

  def __init__(self, batches: Batches, start: int, stop: int, workers: int = 0,
               prefetch: int = 2):
    ds = grain.MapDataset.range(start, stop).map(batches.batch)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                              prefetch_buffer_size=prefetch))
    if workers:
      from absl import flags  # grain's workers read its absl flags: outside a
      if not flags.FLAGS.is_parsed():  # command (a script, a notebook) take
        flags.FLAGS.mark_as_parsed()   # their defaults
      # Batches come back through the workers' queues, not shared memory: a
      # batch of small images is cheap to copy, and closing early (a signal,
      # the last step) then leaves no shared-memory block behind.
      it = grain.experimental.WithOptionsIterDataset(
          it, grain.experimental.DatasetOptions(min_shm_size=2 ** 62))
      it = it.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=workers, per_worker_buffer_size=prefetch),
          worker_init_fn=_worker_init)
    self._it: Iterator = iter(it)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return next(self._it)

  def close(self) -> None:
    close = getattr(self._it, 'close', None)
    if close is not None:
      close()

  def __enter__(self) -> 'BatchIterator':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
