"""Will a sampling call fit? An estimate of its peak memory from the canvas,
the batch and the network, made before anything is compiled, against the
memory of the device it runs on.

The estimate counts, per image, float32 activations: the skip tensors a
UNet keeps for its decoder path, a working set of a few tensors at its
widest level, and the attention logits (heads × tokens², which is what
grows fastest with the canvas: a 2028×2028 canvas asks half a terabyte).
It is an upper-bound guess, not XLA's own figure; `fits` refuses only what
is past the device's memory, and the allocation failure of anything it
misses is still caught as one line by the pipeline.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax

_FLOAT = 4            # bytes per activation (float32)
_WORKING = 8          # tensors alive at once at the widest level
_LOGITS = 2           # attention logits and their softmax


@dataclasses.dataclass(frozen=True)
class Level:
  """One resolution level of a network, per image."""
  scale: int          # the canvas side over this level's side
  channels: int
  kept: int           # tensors of this level held for later (UNet skips)
  heads: int = 0      # self-attention heads here (0: none)
  context: int = 0    # cross-attention tokens (text models)


def network_bytes(levels: Sequence[Level], height: int, width: int) -> int:
  """Peak activation bytes of one image through these levels."""
  kept = widest = attention = 0
  for lv in levels:
    n = (height // lv.scale) * (width // lv.scale)
    kept += lv.kept * n * lv.channels
    widest = max(widest, n * lv.channels)
    attention = max(attention, lv.heads * n * (n + lv.context) * _LOGITS)
  return _FLOAT * (kept + _WORKING * widest + attention)


def device_bytes() -> int | None:
  """The memory one device can allocate: its allocator's limit (GPU/TPU),
  or the host's available memory for the CPU backend; None if unknown."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  if hasattr(os, 'sysconf'):
    try:
      return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError):
      pass
  return None


def gib(n: float) -> str:
  return f'{n / 2 ** 30:.1f} GiB'
