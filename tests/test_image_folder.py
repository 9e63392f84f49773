"""A folder of your images: decoding, crops, labels, captions, broken files,
and every bad folder as one line."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import data as data_lib
from ddpm_jax.image_folder import FolderError, FolderSource, to_square


def _save(path, img, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.save(path, **kw)


def test_any_mode_and_size_becomes_a_square_of_the_right_channels():
  cases = [Image.new('L', (40, 20), 200), Image.new('RGB', (17, 33), (10, 200, 30)),
           Image.new('CMYK', (30, 30), (0, 0, 0, 0)), Image.new('I;16', (12, 20), 65535),
           Image.new('P', (9, 9), 3)]
  for img in cases:
    for channels in (1, 3):
      out = to_square(img, 8, channels, 'center')
      assert out.shape == (8, 8, channels) and out.dtype == np.uint8
      assert (out == out[0, 0]).all()  # a uniform image stays uniform
  assert to_square(Image.new('I;16', (12, 20), 65535), 8, 1, 'center').max() == 255


def test_alpha_is_composited_on_black_and_the_centre_is_cropped():
  rgba = Image.new('RGBA', (16, 8), (255, 255, 255, 255))
  rgba.paste((255, 255, 255, 0), (0, 0, 4, 8))        # the left quarter transparent
  out = to_square(rgba, 8, 1, 'center')               # 16x8 -> the middle 8x8
  assert out.shape == (8, 8, 1) and np.all(out == 255)
  clear = Image.new('RGBA', (8, 8), (255, 255, 255, 0))
  assert to_square(clear, 8, 3, 'center').max() == 0   # transparent: black
  half = Image.new('LA', (8, 8), (255, 128))
  assert 126 <= int(to_square(half, 8, 1, 'center').mean()) <= 129
  wide = Image.new('L', (16, 8), 0)
  wide.paste(255, (0, 0, 8, 8))                        # left half white
  left = to_square(wide, 8, 1, 'random', np.random.default_rng(0))
  centre = to_square(wide, 8, 1, 'center')
  assert centre[:, :4].mean() == 255 and centre[:, 4:].mean() == 0
  crops = {to_square(wide, 8, 1, 'random', np.random.default_rng(s)).mean()
           for s in range(20)}
  assert len(crops) > 3 and left.shape == (8, 8, 1)    # random crops move


def test_exif_orientation_is_applied(tmp_path):
  img = Image.new('L', (20, 10), 0)
  img.paste(255, (0, 0, 10, 10))                       # left half white
  exif = Image.Exif()
  exif[0x0112] = 6                                     # rotate 90 degrees CW to view
  _save(str(tmp_path / 'r.jpg'), img, exif=exif.tobytes(), quality=100)
  with Image.open(tmp_path / 'r.jpg') as f:
    out = to_square(f, 10, 1, 'center')[..., 0]
  # viewed upright the image is 10 wide, 20 tall, white on top: the centre
  # crop is half white (top), half black (bottom)
  assert out[:4].mean() > 200 and out[-4:].mean() < 50


def _folder(tmp_path):
  root = tmp_path / 'imgs'
  rng = np.random.default_rng(0)
  for cls in ('cat', 'dog'):
    for i in range(5):
      size = (int(rng.integers(6, 30)), int(rng.integers(6, 30)))
      _save(str(root / cls / f'{i}.png'), Image.new('RGB', size, (i * 40, 0, 0)))
  _save(str(root / 'dog' / 'deeper' / 'x.JPG'), Image.new('RGB', (12, 12)))
  (root / 'cat' / 'broken.png').write_bytes(b'not an image')
  (root / 'cat' / 'empty.jpg').write_bytes(b'')
  good = (root / 'cat' / '0.png').read_bytes()
  (root / 'dog' / 'truncated.png').write_bytes(good[:len(good) // 2])
  (root / 'cat' / 'notes.md').write_text('ignored: not an image extension')
  return root


def test_labels_from_sub_folders_and_broken_files_skipped_and_named(tmp_path):
  root = _folder(tmp_path)
  src = FolderSource(str(root), 8, 3, labels=True)
  assert src.class_names == ['cat', 'dog'] and len(src) == 11
  assert list(src.labels) == [0] * 5 + [1] * 6          # dog/deeper/x.JPG is a dog
  s = src.summary
  assert sorted(s.skipped) == ['cat/broken.png', 'cat/empty.jpg', 'dog/truncated.png']
  line = s.line(str(root), False)
  assert '11 images, 2 classes' in line and '3 skipped (cat/broken.png' in line
  images, labels = src.read(np.array([0, 6]))
  assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
  assert list(labels) == [0, 1]
  again = FolderSource(str(root), 8, 3, labels=True)       # the same every time
  assert again.paths == src.paths


def test_captions_from_metadata_jsonl_and_txt_files(tmp_path):
  root = tmp_path / 'c'
  for name in ('a.png', 'b.png', 'sub/c.png'):
    _save(str(root / name), Image.new('L', (8, 8)))
  (root / 'metadata.jsonl').write_text(json.dumps({'file_name': 'a.png', 'text': 'un gato'}) + '\n')
  (root / 'sub' / 'c.txt').write_text('a  dog\n', encoding='utf-8')
  src = FolderSource(str(root), 8, 1, captions=True)
  assert src.texts([0, 1, 2]) == ['un gato', '', 'a dog']
  assert src.summary.captioned == 2
  assert '2 with captions, 1 with the empty prompt' in src.summary.line(str(root), True)
  b = data_lib.Batches(src, 3, seed=0, text_max_len=16).batch(0)
  assert b['tokens'].shape == (3, 16)


@pytest.mark.parametrize('make, message', [
    (lambda r: r.mkdir(), 'holds no image files'),
    (lambda r: None, 'does not exist'),
    (lambda r: r.write_text('x'), 'is not a directory'),
    (lambda r: (r.mkdir(), (r / 'a.png').write_bytes(b'junk')), 'none of its 1 image files decodes'),
    (lambda r: (r.mkdir(), Image.new('L', (4, 4)).save(r / 'a.png')), 'lie directly in it'),
])
def test_bad_folders_are_one_line(tmp_path, make, message):
  root = tmp_path / 'f'
  make(root)
  with pytest.raises(FolderError, match=message) as e:
    FolderSource(str(root), 8, 1, labels=True)
  assert '\n' not in str(e.value)


def test_bad_caption_files_are_one_line(tmp_path):
  root = tmp_path / 'c'
  _save(str(root / 'a.png'), Image.new('L', (8, 8)))
  (root / 'metadata.jsonl').write_text('{"file_name": "a.png", "text": "ok"}\n{"file_name": 3}\n')
  with pytest.raises(FolderError, match=r'metadata.jsonl line 2: expected UTF-8 JSON'):
    FolderSource(str(root), 8, 1, captions=True)
  (root / 'metadata.jsonl').unlink()
  (root / 'a.txt').write_bytes('año'.encode('latin-1'))
  with pytest.raises(FolderError, match=r'a.txt is not UTF-8 text \(byte 1\)'):
    FolderSource(str(root), 8, 1, captions=True)


def test_random_crops_depend_on_the_position_only_so_two_processes_equal_one(tmp_path):
  root = _folder(tmp_path)
  src = FolderSource(str(root), 8, 3, labels=True, crop='random', seed=5)
  one = data_lib.Batches(src, 4, seed=1)
  two = [data_lib.Batches(src, 4, seed=1, process_index=i, process_count=2)
         for i in range(2)]
  for step in (0, 3):
    whole = one.batch(step)['image']
    parts = np.concatenate([b.batch(step)['image'] for b in two])
    np.testing.assert_array_equal(whole, parts)
  np.testing.assert_array_equal(one.batch(2)['image'], one.batch(2)['image'])


def test_a_tfds_source_of_mixed_sizes_is_resized_and_cropped():
  """TFDSSource over a random-access source of mixed-size images (what
  tfds.data_source returns): the same resize-and-crop as a folder, for
  every batch (a batch of one shape too); a dataset of one size stays as it
  is, for the train step to resize."""
  items = [{'image': np.full((h, w, 3), 100 + i, np.uint8), 'label': i}
           for i, (h, w) in enumerate([(20, 30), (50, 10), (8, 8)])]
  src = data_lib.TFDSSource(items, 8, 3, mixed=True)
  images, labels = src.read(np.arange(3))
  assert images.shape == (3, 8, 8, 3) and list(labels) == [0, 1, 2]
  assert [int(images[i].mean()) for i in range(3)] == [100, 101, 102]
  assert src.read(np.array([1]))[0].shape == (1, 8, 8, 3)
  same = data_lib.TFDSSource([{'image': np.zeros((20, 20), np.uint8)}] * 2, 8, 1)
  assert same.read(np.arange(2))[0].shape == (2, 20, 20, 1)
