"""The grain input pipeline: batches in step order whatever the workers, an
exact resume from a folder source decoded in worker processes, and bad
folders stopped before training."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from ddpm_jax import data as data_lib
from ddpm_jax.image_folder import FolderSource
from ddpm_jax.input_pipeline import BatchIterator


def _shapes(root, n=24):
  rng = np.random.default_rng(0)
  for i in range(n):
    cls = ('a', 'b')[i % 2]
    os.makedirs(root / cls, exist_ok=True)
    size = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
    Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).save(
        root / cls / f'{i}.png')
  (root / 'a' / 'broken.jpg').write_bytes(b'\xff\xd8 truncated')
  return root


@pytest.mark.parametrize('workers', [0, 2])
def test_batches_come_in_step_order_whatever_the_workers(tmp_path, workers):
  src = FolderSource(str(_shapes(tmp_path / 'f')), 8, 1, labels=True,
                     crop='random', seed=3)
  batches = data_lib.Batches(src, 4, seed=1)
  with BatchIterator(batches, 5, 11, workers) as it:
    got = list(it)
  assert len(got) == 6
  for step, b in zip(range(5, 11), got):
    want = batches.batch(step)
    np.testing.assert_array_equal(b['image'], want['image'])
    np.testing.assert_array_equal(b['label'], want['label'])


def _train(workdir, folder, steps):
  args = [sys.executable, os.path.join(REPO, 'train.py'),
          f'--config={os.path.join(REPO, "configs", "tiny.py")}',
          f'--workdir={workdir}', '--config.data.name=folder',
          f'--config.data.folder={folder}', '--config.data.workers=2',
          '--config.data.crop=random', '--config.model.class_conditional=True',
          f'--config.training.num_steps={steps}', '--config.training.log_every=1',
          '--config.training.checkpoint_every=2']
  return subprocess.run(args, capture_output=True, text=True, timeout=300)


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [(r['step'], r['loss']) for r in map(json.loads, f)]


@pytest.mark.slow
def test_a_folder_run_resumed_with_two_workers_repeats_the_uninterrupted_run(tmp_path):
  folder = _shapes(tmp_path / 'f')
  r = _train(tmp_path / 'full', folder, 4)
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'data: ' in r.stdout and '24 images, 2 classes' in r.stdout
  assert '1 skipped (a/broken.jpg)' in r.stdout
  assert _train(tmp_path / 'split', folder, 2).returncode == 0
  r = _train(tmp_path / 'split', folder, 4)
  assert r.returncode == 0 and 'resuming from checkpoint at step 2' in r.stdout
  assert _losses(tmp_path / 'split') == _losses(tmp_path / 'full')
  from ddpm_jax.pipeline import load
  pipe = load(str(tmp_path / 'full'))
  assert list(pipe.config.data.class_names) == ['a', 'b']
  assert pipe.sample(num=2, labels=['b', 'a'], sampler='ddim', num_steps=2).shape == (2, 8, 8, 1)


def test_bad_folders_stop_train_py_with_one_line_and_no_workdir(tmp_path):
  few = tmp_path / 'few'
  few.mkdir()
  for i in range(3):
    os.makedirs(few / 'a', exist_ok=True)
    Image.new('L', (8, 8)).save(few / 'a' / f'{i}.png')
  for folder, message in [(few, '3 usable images, fewer than one batch'),
                          (tmp_path / 'missing', 'does not exist')]:
    wd = tmp_path / 'wd'
    r = _train(wd, folder, 2)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not wd.exists()


def test_a_text_model_trains_on_a_folders_own_captions(tmp_path, tiny_config):
  from ddpm_jax.train.loop import train
  folder = tmp_path / 'c'
  folder.mkdir()
  rows = []
  for i in range(8):
    Image.new('L', (10 + i, 12), 30 * i).save(folder / f'{i}.png')
    rows.append(json.dumps({'file_name': f'{i}.png', 'text': f'grey level {i}'}))
  (folder / 'metadata.jsonl').write_text('\n'.join(rows[:6]) + '\n')
  c = tiny_config
  c.data.name, c.data.folder, c.data.captions = 'folder', str(folder), 'folder'
  c.model.text_conditional = True
  c.model.text_dim, c.model.text_heads = 16, 2
  c.model.cross_attn_resolutions = (4,)
  c.training.num_steps, c.training.num_sample_images = 2, 2
  summary = train(c, str(tmp_path / 'wd'), progress=False)
  assert summary['step'] == 2 and np.isfinite(summary['final_loss'])
  assert (tmp_path / 'wd' / 'samples' / 'step_0000002.png').is_file()


def test_ctrl_c_to_the_process_group_spares_the_workers_and_leaves_none(tmp_path):
  """A terminal's Ctrl-C reaches the trainer and its grain workers: the
  workers ignore it, the trainer saves and exits 130 with one line, and no
  worker outlives it."""
  import signal
  import time
  folder = _shapes(tmp_path / 'f')
  wd = tmp_path / 'wd'
  args = [sys.executable, os.path.join(REPO, 'train.py'),
          f'--config={os.path.join(REPO, "configs", "tiny.py")}', f'--workdir={wd}',
          '--config.data.name=folder', f'--config.data.folder={folder}',
          '--config.data.workers=2', '--config.training.num_steps=100000',
          '--config.training.log_every=1', '--config.training.checkpoint_every=100000']
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  metrics = wd / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and
                                        len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGINT)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 130, err[-2000:]
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-2000:]
  assert 'stopped by SIGINT: saved the checkpoint of step' in out
  time.sleep(2)
  with pytest.raises(ProcessLookupError):   # nothing left in its session
    os.killpg(proc.pid, 0)


def test_class_names_that_are_digits_are_names_first(tiny_config):
  from conftest import untrained_pipeline
  c = tiny_config
  c.model.class_conditional = True
  c.data.num_classes, c.data.class_names = 3, ('1', '10', '2')
  pipe = untrained_pipeline(c, lambda p: p)
  req = pipe.request(num=3, labels=['10', '1', 2], sampler='ddim', num_steps=2)
  assert list(req.y) == [1, 0, 2]
