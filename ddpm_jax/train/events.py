"""TensorBoard event files in the workdir: `tensorboard --logdir WORKDIR`.

The summaries are built with tensorboardX's protos; the records are framed
here (TFRecord: length, masked CRC-32C, data, masked CRC-32C) and written
through `files.AppendFile`, so a `gs://` workdir works like a local one.
Each process start writes one file, `events.out.tfevents.<time>.<host>.<pid>`.
On resume from step s, the records of later steps are dropped from the
earlier files first (those steps run again), as metrics.jsonl does, so no
step is ever written twice.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import numpy as np
from etils import epath
from tensorboardX import summary as tbx_summary
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from ddpm_jax import files

PREFIX = 'events.out.tfevents.'


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """One TFRecord: what TensorBoard's reader expects of every event."""
  header = struct.pack('<Q', len(data))
  return (header + struct.pack('<I', _masked_crc(header)) + data
          + struct.pack('<I', _masked_crc(data)))


def read_records(blob: bytes) -> list[bytes]:
  """The intact records of an event file; a record torn by a hard kill (and
  anything after it) is left out."""
  out, i = [], 0
  while i + 12 <= len(blob):
    header = blob[i:i + 8]
    (n,) = struct.unpack('<Q', header)
    (crc,) = struct.unpack('<I', blob[i + 8:i + 12])
    end = i + 12 + n + 4
    if crc != _masked_crc(header) or end > len(blob):
      break
    data = blob[i + 12:i + 12 + n]
    if struct.unpack('<I', blob[end - 4:end])[0] != _masked_crc(data):
      break
    out.append(data)
    i = end
  return out


def event_files(logdir: str) -> list[str]:
  if not files.isdir(logdir):
    return []
  return sorted(str(p) for p in epath.Path(logdir).glob(PREFIX + '*'))


class EventWriter:
  """Scalars and images for TensorBoard (only where `enabled`: process 0)."""

  def __init__(self, logdir: str, enabled: bool):
    self.logdir, self.enabled = logdir, enabled
    self.file: files.AppendFile | None = None

  def truncate_after(self, step: int) -> None:
    """Opens this run's event file; drops the records of steps after `step`
    (and torn ones) from the files of earlier runs."""
    if not self.enabled:
      return
    for path in event_files(self.logdir):
      blob = files.read_bytes(path)
      records = read_records(blob)
      keep = [r for r in records
              if event_pb2.Event.FromString(r).step <= step]
      if len(keep) != len(records) or sum(len(r) + 16 for r in records) != len(blob):
        data = b''.join(frame(r) for r in keep)
        files.atomic_write(path, lambda f: f.write(data))
    name = f'{PREFIX}{time.time():.0f}.{socket.gethostname()}.{os.getpid()}'
    path = files.join(self.logdir, name)
    first = frame(event_pb2.Event(wall_time=time.time(),
                                  file_version='brain.Event:2').SerializeToString())
    self.file = files.AppendFile(path)
    self.file.append(first)

  def _write(self, step: int, summary) -> None:
    if self.enabled and self.file is not None:
      event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
      self.file.append(frame(event.SerializeToString()))

  def scalars(self, step: int, **values: float) -> None:
    for tag, value in values.items():
      self._write(step, tbx_summary.scalar(tag, float(value)))

  def image(self, step: int, tag: str, image_HWC: np.ndarray) -> None:
    """A uint8 image (H, W, 1 or 3)."""
    if image_HWC.shape[-1] == 1:
      image_HWC = np.repeat(image_HWC, 3, axis=-1)
    self._write(step, tbx_summary.image(tag, image_HWC, dataformats='HWC'))

  def flush(self) -> None:
    """Uploads what is pending (an object store: at checkpoints and the end)."""
    if self.file is not None:
      self.file.flush(force=True)
