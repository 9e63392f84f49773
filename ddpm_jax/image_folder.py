"""Your own images as a training source: a folder of image files, with class
labels from its sub-folders or captions from `metadata.jsonl` / `.txt` files.

- Every file below the folder (recursively) whose extension is one of
  `EXTENSIONS` (any case) is a candidate, in sorted path order.
- Each is decoded once when the source is built; a file that does not
  decode (corrupt, truncated, empty, not an image) is skipped, the same ones
  on every host and after every resume, and named in the summary.
- Labels (`labels=True`): the name of the first-level sub-folder, classes
  sorted by name; an image directly in the folder has no class and is an
  error.
- Captions (`captions=True`): `metadata.jsonl` in the folder, one
  `{"file_name": ..., "text": ...}` per line (Hugging Face's imagefolder
  convention; file names relative to the folder), else a `.txt` file beside
  the image with the same stem. An image with neither gets the empty prompt.
- Decoding applies the EXIF orientation, composites any alpha on black,
  converts to the channel count asked for, resizes the shorter side to
  `size` and crops the centre (`crop='center'`) or a random square
  (`crop='random'`, drawn from the batch position, so the same on every host
  and after a resume).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ddpm_jax.errors import UserError
from ddpm_jax.options import CROPS

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.gif')
# What Pillow raises for a file it cannot decode.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                  Image.DecompressionBombError, EOFError)


class FolderError(UserError):
  """A folder that cannot be trained on; one line for the user."""


def to_square(img: Image.Image, size: int, channels: int, crop: str,
              rng: np.random.Generator | None = None) -> np.ndarray:
  """An opened image as uint8 [size, size, channels]: EXIF orientation,
  alpha composited on black, resized (shorter side to `size`, bicubic) and
  cropped."""
  img = ImageOps.exif_transpose(img)
  if img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info):
    rgba = img.convert('RGBA')
    black = Image.new('RGBA', rgba.size, (0, 0, 0, 255))
    img = Image.alpha_composite(black, rgba)
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):   # 16-bit grey: scale to 8 bits
    arr = np.asarray(img, np.float64)
    img = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8), 'L')
  img = img.convert('L' if channels == 1 else 'RGB')
  w, h = img.size
  scale = size / min(w, h)
  if (w, h) != (size, size):
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    w, h = nw, nh
  if crop == 'random' and rng is not None:
    left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
  else:
    left, top = (w - size) // 2, (h - size) // 2
  arr = np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def _decodes(path: str) -> tuple[bool, int]:
  """(whether the file decodes fully, its shorter side)."""
  try:
    with Image.open(path) as img:
      img.load()
      return True, min(img.size)
  except _DECODE_ERRORS:
    return False, 0


@dataclasses.dataclass
class Summary:
  images: int
  classes: list[str]
  captioned: int
  skipped: list[str]
  upscaled: int

  def line(self, folder: str, captions: bool) -> str:
    parts = [f'{self.images} images']
    if self.classes:
      parts.append(f'{len(self.classes)} classes')
    if captions:
      parts.append(f'{self.captioned} with captions, {self.images - self.captioned} '
                   'with the empty prompt')
    parts.append(f'{self.upscaled} upscaled')
    skipped = f'{len(self.skipped)} skipped'
    if self.skipped:
      shown = ', '.join(self.skipped[:3])
      skipped += f' ({shown}{", ..." if len(self.skipped) > 3 else ""})'
    parts.append(skipped)
    return f'data: {folder}: ' + ', '.join(parts)


class FolderSource:
  """Random access to a folder's decodable images (uint8, `size` square)."""

  def __init__(self, folder: str, size: int, channels: int, *,
               labels: bool = False, captions: bool = False,
               crop: str = 'center', seed: int = 0):
    if crop not in CROPS:
      raise FolderError(f'data.crop must be one of {list(CROPS)}, got {crop!r}')
    if not folder:
      raise FolderError('name the folder of images: --config.data.folder=PATH')
    if not os.path.isdir(folder):
      raise FolderError(f'data.folder {folder} does not exist' if not
                        os.path.exists(folder) else
                        f'data.folder {folder} is not a directory')
    self.folder, self.size, self.channels = folder, size, channels
    self.crop, self.seed = crop, seed
    paths = _list_images(folder)
    if not paths:
      raise FolderError(f'data.folder {folder} holds no image files '
                        f'({", ".join(EXTENSIONS)})')
    ok, skipped, upscaled = [], [], 0
    for p in paths:
      good, short = _decodes(p)
      if good:
        ok.append(p)
        upscaled += short < size
      else:
        skipped.append(os.path.relpath(p, folder))
    if not ok:
      raise FolderError(f'data.folder {folder}: none of its {len(paths)} image '
                        f'files decodes (e.g. {skipped[0]})')
    self.paths = ok
    self.class_names: list[str] = []
    self.labels = np.zeros(len(ok), np.int32)
    if labels:
      self.class_names, self.labels = _class_labels(folder, ok)
    self.captions: list[str] | None = None
    captioned = 0
    if captions:
      self.captions, captioned = _captions(folder, ok)
    self.summary = Summary(len(ok), self.class_names, captioned, skipped, upscaled)

  def __len__(self) -> int:
    return len(self.paths)

  def _image(self, i: int, position: int | None) -> np.ndarray:
    rng = (np.random.default_rng([self.seed, int(position)])
           if self.crop == 'random' and position is not None else None)
    with Image.open(self.paths[int(i)]) as img:
      return to_square(img, self.size, self.channels, self.crop, rng)

  def read(self, idx: Sequence[int], positions: Sequence[int] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(images [B, size, size, C] uint8, labels [B]); `positions` (the
    images' places in the run's stream) seed random crops."""
    pos = [None] * len(idx) if positions is None else list(positions)
    images = np.stack([self._image(i, p) for i, p in zip(idx, pos)])
    return images, self.labels[np.asarray(idx, np.int64)]

  def texts(self, idx: Sequence[int]) -> list[str]:
    """The captions of these images ('' where an image has none)."""
    return [self.captions[int(i)] for i in idx] if self.captions else [''] * len(idx)


def _list_images(folder: str) -> list[str]:
  out = []
  try:
    for root, dirs, files in os.walk(folder, onerror=_raise):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      out += [os.path.join(root, f) for f in sorted(files)
              if f.lower().endswith(EXTENSIONS) and not f.startswith('.')]
  except PermissionError as e:
    raise FolderError(f'data.folder: cannot read {e.filename}: permission '
                      'denied') from None
  return out


def _raise(e: OSError) -> None:
  raise e


def _class_labels(folder: str, paths: list[str]) -> tuple[list[str], np.ndarray]:
  parts = [os.path.relpath(p, folder).split(os.sep) for p in paths]
  loose = [os.path.join(*p) for p in parts if len(p) == 1]
  if loose:
    raise FolderError(f'class labels come from sub-folders of {folder}, but '
                      f'{len(loose)} images lie directly in it (e.g. {loose[0]}); '
                      'put each class in its own sub-folder')
  names = sorted({p[0] for p in parts})
  ids = {n: k for k, n in enumerate(names)}
  return names, np.array([ids[p[0]] for p in parts], np.int32)


def _captions(folder: str, paths: list[str]) -> tuple[list[str], int]:
  meta = os.path.join(folder, 'metadata.jsonl')
  by_name: dict[str, str] = {}
  if os.path.isfile(meta):
    with open(meta, 'rb') as f:
      for n, raw in enumerate(f, 1):
        if not raw.strip():
          continue
        try:
          row = json.loads(raw.decode('utf-8'))
          name, text = row['file_name'], row['text']
          if not isinstance(name, str) or not isinstance(text, str):
            raise TypeError
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
          raise FolderError(f'{meta} line {n}: expected UTF-8 JSON '
                            '{"file_name": ..., "text": ...}') from None
        by_name[os.path.normpath(name)] = text
  out, found = [], 0
  for p in paths:
    rel = os.path.normpath(os.path.relpath(p, folder))
    text = by_name.get(rel)
    txt = os.path.splitext(p)[0] + '.txt'
    if text is None and os.path.isfile(txt):
      try:
        with open(txt, encoding='utf-8') as f:
          text = ' '.join(f.read().split())
      except UnicodeDecodeError as e:
        raise FolderError(f'caption file {txt} is not UTF-8 text (byte '
                          f'{e.start})') from None
    found += text is not None
    out.append(text or '')
  return out, found
