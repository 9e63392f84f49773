"""Bad input to train.py and sample.py: one line, non-zero exit, nothing touched."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import FOUR_DEVICES_ENV, REPO


# Most of a failing command's 1.5 s is importing JAX, Flax, Orbax and the
# library. `_run` starts each command as a fork of one server process that
# has imported them (and started no JAX backend, so forking is safe): the
# child is the command's own process, `python script args` after the
# imports, with its own exit status and output, which begins with whatever
# the imports printed. Arguments that are bytes, and environments other
# than this one and FOUR_DEVICES_ENV (which differs in XLA_FLAGS only, read
# when the backend starts), get a real subprocess.
_SERVER = r"""
import json, os, runpy, signal, sys, tempfile
def capture(fd):
  saved, f = os.dup(fd), tempfile.TemporaryFile()
  os.dup2(f.fileno(), fd)
  return saved, f
(out, out_f), (err, err_f) = capture(1), capture(2)
import jax, jax.numpy, flax.nnx, optax, orbax.checkpoint, ml_collections
import ddpm_jax.pipeline, ddpm_jax.train.loop, ddpm_jax.checkpoint
sys.stdout.flush(); sys.stderr.flush()
os.dup2(out, 1); os.dup2(err, 2)
printed = []
for f in (out_f, err_f):
  f.seek(0)
  printed.append(f.read())
replies = os.fdopen(os.dup(1), 'w')
for line in sys.stdin:
  req = json.loads(line)
  pid = os.fork()
  if pid == 0:
    for fd, path, pre in ((1, req['stdout'], printed[0]), (2, req['stderr'], printed[1])):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
      os.write(fd, pre)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.chdir(req['cwd'])
    os.environ['XLA_FLAGS'] = req['xla_flags']
    signal.alarm(300)
    sys.argv = req['argv']
    runpy.run_path(req['argv'][0], run_name='__main__')
    sys.exit(0)
  _, status = os.waitpid(pid, 0)
  replies.write(json.dumps(os.waitstatus_to_exitcode(status)) + '\n')
  replies.flush()
"""
_server = None


@pytest.fixture(scope='module', autouse=True)
def _command_server():
  global _server
  yield
  if _server is not None:
    _server.stdin.close()
    _server.wait(timeout=60)
    _server = None


def _run(script, *args, cwd=None, env=None):
  global _server
  argv = [os.path.join(REPO, script), *args]
  if env not in (None, FOUR_DEVICES_ENV) or any(isinstance(a, bytes) for a in argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300, env=env)
  if _server is None:
    _server = subprocess.Popen([sys.executable, '-c', _SERVER], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
  with tempfile.TemporaryDirectory() as d:
    out, err = os.path.join(d, 'out'), os.path.join(d, 'err')
    _server.stdin.write(json.dumps(dict(
        argv=argv, cwd=str(cwd or REPO), stdout=out, stderr=err,
        xla_flags=(env or os.environ)['XLA_FLAGS'])) + '\n')
    _server.stdin.flush()
    rc = json.loads(_server.stdout.readline())
    read = lambda p: open(p, encoding='utf-8', errors='replace').read()
    return subprocess.CompletedProcess([sys.executable, *argv], rc, read(out), read(err))


def _snapshot(root):
  """Hashes of every file, but the lock's owner record ("pid host"), which
  every start that takes the lock rewrites."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      if f == 'train.lock':
        continue
      p = os.path.join(d, f)
      with open(p, 'rb') as fh:
        out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
  return out


def _assert_one_line_error(r, *needles):
  assert r.returncode != 0, r.stdout + r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith('error: '), r.stderr
  for n in needles:
    assert n in lines[0], lines[0]
  assert 'Traceback' not in r.stderr


TINY = os.path.join(REPO, 'configs', 'tiny.py')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  wd = tmp_path_factory.mktemp('trained')
  r = _run('train.py', f'--config={TINY}', f'--workdir={wd}',
           '--config.training.num_sample_images=4')
  assert r.returncode == 0, r.stderr
  assert os.path.isfile(wd / 'samples' / 'step_0000006.png')
  assert sorted(os.listdir(wd / 'checkpoints')) == ['3', '6']
  return wd


@pytest.mark.parametrize('args, needles', [
    (['--wrkdir=x'], ["Unknown command line flag 'wrkdir'"]),
    (['--config.training.bach_size=4'], ['unknown config key', 'batch_size']),
    (['--config.training.batch_size=0'], ['batch_size must be positive']),
    (['--config.training.batch_size=6'], ['does not divide over 4 devices']),
    (['--config.data.image_size=9'], ['image_size=9 cannot be halved']),
    (['--config.diffusion.prediction=score'], ["diffusion.prediction='score'"]),
    (['--config.diffusion.loss_weighting=p2'], ["diffusion.loss_weighting='p2'"]),
    (['--config.diffusion.min_snr_gamma=0'], ['min_snr_gamma must be positive']),
    (['--config=configs/missing.py'], ['config file configs/missing.py does not exist']),
])
def test_train_rejects_bad_config(args, needles, tmp_path):
  wd = tmp_path / 'wd'
  r = _run('train.py', f'--config={TINY}', f'--workdir={wd}', *args,
           env=FOUR_DEVICES_ENV)   # the divisibility check needs 4
  _assert_one_line_error(r, *needles)
  assert not wd.exists()


def test_train_rejects_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('keep me')
  r = _run('train.py', f'--config={TINY}', f'--workdir={blocker}/sub')
  _assert_one_line_error(r, 'is not writable')
  assert blocker.read_text() == 'keep me'


def test_train_refuses_a_checkpoint_of_another_model(trained):
  before = _snapshot(trained)
  r = _run('train.py', f'--config={TINY}', f'--workdir={trained}',
           '--config.model.ch=16', '--config.training.num_steps=9')
  _assert_one_line_error(r, 'another model config', 'model.ch')
  assert _snapshot(trained) == before


def test_sample_writes_png_npy_gif_and_is_deterministic(trained, tmp_path):
  import numpy as np
  out = tmp_path / 'a.png'
  r = _run('sample.py', f'--workdir={trained}', '--num=4', '--seed=3', f'--out={out}', '--gif',
           '--npy')
  assert r.returncode == 0, r.stderr
  assert out.is_file() and (tmp_path / 'a.gif').is_file()
  a = np.load(tmp_path / 'a.npy')
  r = _run('sample.py', f'--workdir={trained}', '--num=4', '--seed=3',
           f'--out={tmp_path / "b.png"}', '--checkpoint=6', '--npy')
  assert r.returncode == 0, r.stderr
  np.testing.assert_array_equal(a, np.load(tmp_path / 'b.npy'))
  assert a.shape == (4, 8, 8, 1)


def test_sample_on_directory_without_checkpoint(tmp_path):
  before = _snapshot(tmp_path)
  r = _run('sample.py', f'--workdir={tmp_path}', f'--out={tmp_path / "s.png"}')
  _assert_one_line_error(r, 'no checkpoint found')
  assert _snapshot(tmp_path) == before


def test_sample_missing_step_and_bad_num(trained, tmp_path):
  r = _run('sample.py', f'--workdir={trained}', '--checkpoint=4', f'--out={tmp_path / "s.png"}')
  _assert_one_line_error(r, 'no checkpoint for step 4')
  r = _run('sample.py', f'--workdir={trained}', '--num=0', f'--out={tmp_path / "s.png"}')
  _assert_one_line_error(r, '--num must be an integer >= 1, got 0')
  assert not list(tmp_path.iterdir())


def test_sample_on_corrupt_checkpoint_keeps_existing_output(trained, tmp_path):
  wd = tmp_path / 'wd'
  shutil.copytree(trained, wd)
  for d, _, files in os.walk(wd / 'checkpoints' / '6' / 'state'):
    for f in files:
      p = os.path.join(d, f)
      if os.path.getsize(p) > 1000:
        with open(p, 'r+b') as fh:
          fh.truncate(os.path.getsize(p) // 2)
  out = tmp_path / 'old.png'
  out.write_bytes(b'previous result')
  # Asked for by number, a damaged step is an error (without --checkpoint
  # the one before it is used, with a warning: tests/test_checkpoint.py).
  r = _run('sample.py', f'--workdir={wd}', '--checkpoint=6', f'--out={out}', '--overwrite')
  _assert_one_line_error(r, 'checkpoint 6', 'is damaged')
  assert out.read_bytes() == b'previous result'
  # A checkpoint whose saved config disagrees with its arrays.
  meta = wd / 'checkpoints' / '3' / 'meta' / 'metadata'
  meta.write_text(meta.read_text().replace('"ch": 8', '"ch": 16'))
  r = _run('sample.py', f'--workdir={wd}', '--checkpoint=3', f'--out={out}',
           '--overwrite')
  _assert_one_line_error(r, 'checkpoint 3', 'does not match the model')
  assert out.read_bytes() == b'previous result'


def test_evaluate_refuses_a_non_mnist_shaped_model(trained):
  r = subprocess.run([sys.executable, '-m', 'ddpm_jax.cli.evaluate', f'--workdir={trained}',
                      '--num=10'], capture_output=True, text=True, cwd=REPO, timeout=300)
  _assert_one_line_error(r, 'makes 8x8x1')


def test_evaluate_inception_fid(trained, tmp_path):
  """The Inception path end to end, on generated pytorch-fid-layout weights."""
  import json
  import numpy as np
  from ddpm_jax.metrics import inception
  weights = tmp_path / 'fid_inception.npz'
  rng = np.random.default_rng(0)

  def array(key, shape):  # He-scaled convs, identity BatchNorm: features stay O(1)
    if key.endswith('conv.weight'):
      return rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
    return np.ones(shape) if key.endswith(('running_var', 'bn.weight')) else np.zeros(shape)
  np.savez(weights, **{k: array(k, v).astype(np.float32)
                       for k, v in inception.state_dict_shapes().items()})
  stats = tmp_path / 'stats.npz'
  # 4 samples and 4 reference images: one batch shape, one Inception compile
  r = subprocess.run([sys.executable, '-m', 'ddpm_jax.cli.evaluate', f'--workdir={trained}',
                      '--num=4', '--steps=2', f'--ref_stats={stats}', '--ref_images=4',
                      f'--inception_weights={weights}'],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr
  assert 'biased upwards' in r.stdout
  result = json.loads(r.stdout.splitlines()[-2])
  assert result['fid_num_samples'] == 4 and np.isfinite(result['fid']) and result['fid'] > 0
  with np.load(stats) as f:
    assert f['mu'].shape == (2048,) and int(f['num_images']) == 4


def test_unknown_key_on_the_default_config_and_unprepared_data(tmp_path):
  r = _run('train.py', '--config.training.bach_size=4', f'--workdir={tmp_path / "a"}')
  _assert_one_line_error(r, 'unknown config key --config.training.bach_size')
  r = _run('train.py', f'--config={os.path.join(REPO, "configs", "cifar10.py")}',
           f'--config.data.data_dir={tmp_path / "tfds"}', f'--workdir={tmp_path / "b"}')
  _assert_one_line_error(r, "TFDS dataset 'cifar10'", 'download_and_prepare')
  # no data_dir and no ~/tensorflow_datasets at all (tfds: KeyError)
  env = {k: v for k, v in os.environ.items() if k != 'TFDS_DATA_DIR'}
  env['HOME'] = str(tmp_path / 'home')
  r = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'),
                      f'--config={os.path.join(REPO, "configs", "fashion_mnist_autoencoder.py")}',
                      f'--workdir={tmp_path / "c"}'], capture_output=True, text=True,
                     cwd=REPO, timeout=300, env=env)
  _assert_one_line_error(r, "TFDS dataset 'fashion_mnist'", 'download_and_prepare')
  assert not any((tmp_path / d).exists() for d in 'abc')


def test_sample_writes_only_the_files_named(trained, tmp_path):
  out = tmp_path / 'x.png'
  for name in ('x.npy', 'x.gif'):
    (tmp_path / name).write_bytes(b'mine')
  r = _run('sample.py', f'--workdir={trained}', '--num=2', f'--out={out}')
  assert r.returncode == 0, r.stderr
  assert out.is_file()
  assert (tmp_path / 'x.npy').read_bytes() == (tmp_path / 'x.gif').read_bytes() == b'mine'


def test_sample_bad_inputs_are_one_line_before_sampling(trained, tmp_path):
  from PIL import Image
  keep = tmp_path / 'keep.png'
  keep.write_bytes(b'previous')
  good = tmp_path / 'digit.png'
  Image.new('L', (8, 8)).save(good)
  corrupt = tmp_path / 'corrupt.png'
  corrupt.write_bytes(good.read_bytes()[:40] + b'\x00' * 20 + good.read_bytes()[60:])
  huge = tmp_path / 'huge.png'   # a header that declares 100000 x 100000 pixels
  data = bytearray(good.read_bytes())
  data[16:24] = (100000).to_bytes(4, 'big') * 2
  huge.write_bytes(bytes(data))
  (tmp_path / 'adir.png').mkdir()
  latin1 = tmp_path / 'prompts.txt'
  latin1.write_bytes('un siete, año\n'.encode('latin-1'))
  cases = [
      (['--prompt=a one'], 'prompts need a text-conditioned model'),
      (['--label=1', '--prompt=a one'], 'labels or a prompt, not both'),
      ([f'--prompt-file={latin1}'], 'is not UTF-8 text (byte 11)'),
      (['--guidance-scale=nan'], '--guidance-scale must be a finite number, got nan'),
      (['--sampler=ddim', '--eta=nan'], 'eta must be a finite number'),
      (['--sampler=ddim', '--eta=-1'], 'eta must be a finite number'),
      (['--steps=0'], '--steps must be an integer >= 1, got 0'),
      (['--steps=51'], '--steps must be in [1, 50] (the number of sampling steps), got 51'),
      (['--seed=-99999999999999999999999', '--jumps=-1'], '--jumps must be an integer >= 0'),
      ([f'--init-image={corrupt}', '--strength=0.5'], 'not a readable image'),
      ([f'--init-image={huge}', '--strength=0.5'], 'not a readable image'),
      ([f'--init-image={good}', '--strength=nan'], '--strength must be a finite number in [0, 1], got nan'),
      ([f'--init-image={good}', '--outpaint=2,2,2'], '--outpaint takes four integers'),
      ([f'--init-image={good}', '--outpaint=2,2,2,x'], '--outpaint takes four integers'),
      ([f'--init-image={good}', '--outpaint=-2,2,2,2'], 'must be non-negative'),
      ([f'--init-image={good}', '--outpaint=1,0,0,0'], 'the nearest size that works'),
      (['--outpaint=2,2,2,2'], 'need an init image'),
      ([f'--init-image={good}', '--strength=0.5', '--infer-label'],
       '--infer-label needs a'),
      ([f'--init-image={tmp_path}', '--strength=0.5'], 'is a directory, not an image file'),
      ([f'--out={tmp_path / "adir.png"}'], 'is a directory'),
      (['--out=/proc/out.png'], 'output directory /proc is not writable'),  # even as root
  ]
  for args, needle in cases:   # --overwrite: each error still replaces nothing
    r = _run('sample.py', f'--workdir={trained}', '--num=2', f'--out={keep}',
             '--overwrite', *args)
    _assert_one_line_error(r, needle)
    assert r.returncode == 2
  r = _run('sample.py', f'--workdir={trained}', '--num=2', f'--out={keep}')
  _assert_one_line_error(r, 'exists; pass --overwrite to replace it')
  assert keep.read_bytes() == b'previous'


def test_train_refuses_nan_config_values_and_other_experiments(trained, tmp_path):
  r = _run('train.py', f'--config={TINY}', f'--workdir={tmp_path / "n"}',
           '--config.training.learning_rate=nan')
  _assert_one_line_error(r, 'training.learning_rate is nan')
  assert not (tmp_path / 'n').exists()
  before = _snapshot(trained)
  for args, needle in [
      (['--config.diffusion.num_timesteps=10'], 'diffusion.num_timesteps is 50 in the checkpoint but 10'),
      (['--config.diffusion.schedule=cosine'], "diffusion.schedule is 'linear' in the checkpoint but 'cosine'"),
      (['--config.training.batch_size=16'], 'training.batch_size is 8 in the checkpoint but 16'),
      (['--config.seed=1'], 'seed is 0 in the checkpoint but 1'),
      (['--config.diffusion.prediction=v'], "diffusion.prediction is 'eps' in the checkpoint but 'v'")]:
    r = _run('train.py', f'--config={TINY}', f'--workdir={trained}',
             '--config.training.num_steps=9', *args)
    _assert_one_line_error(r, 'cannot resume', needle)
  assert _snapshot(trained) == before


def test_non_utf8_workdir_is_one_line(tmp_path):
  bad = os.fsencode(str(tmp_path)) + b'/\xff\xfe'
  r = subprocess.run([sys.executable, os.path.join(REPO, 'sample.py'),
                      b'--workdir=' + bad, f'--out={tmp_path / "s.png"}'],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
  _assert_one_line_error(r, 'does not exist')


def test_non_utf8_workdir_for_training_is_one_line(tmp_path):
  bad = os.fsencode(str(tmp_path)) + b'/\xff\xfe'
  r = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), f'--config={TINY}',
                      b'--workdir=' + bad], capture_output=True, text=True, cwd=REPO,
                     timeout=300)
  _assert_one_line_error(r, 'is not a valid UTF-8 path')
  assert os.listdir(tmp_path) == []


def test_help_lists_every_flag_of_the_command():
  r = _run('train.py', '--help')
  assert r.returncode == 0, r.stderr
  for flag in ('--workdir', '--config', '--coordinator'):
    assert flag in r.stdout, r.stdout
  assert 'Trains a DDPM' in r.stdout
  r = _run('sample.py', '--help')
  assert r.returncode == 0, r.stderr
  for flag in ('--num', '--sampler', '--prompt', '--outpaint', '--init-image',
               '--guidance-scale', '--[no]overwrite'):
    assert flag in r.stdout, r.stdout
  assert 'dpm++2m' in r.stdout       # the enum's choices, from options.SAMPLERS
  r = subprocess.run([sys.executable, '-m', 'ddpm_jax.cli.evaluate', '--help'],
                     capture_output=True, text=True, cwd=REPO, timeout=120)
  assert '--bpd_images' in r.stdout and '--language' in r.stdout


def test_sample_out_creates_its_folder_and_a_script_load_prints_nothing(
    trained, tmp_path):
  out = tmp_path / 'new' / 'deeper' / 's.png'
  r = _run('sample.py', f'--workdir={trained}', '--num=2', f'--out={out}')
  assert r.returncode == 0, r.stderr
  assert out.is_file()
  blocker = tmp_path / 'file'
  blocker.write_text('keep')
  r = _run('sample.py', f'--workdir={trained}', '--num=2',
           f'--out={blocker}/s.png')
  _assert_one_line_error(r, 'is not a directory')
  assert blocker.read_text() == 'keep'
  script = ('from ddpm_jax import load\n'
            f'x = load({str(trained)!r}).sample(num=4)\n'
            'print(x.shape)\n')
  r = subprocess.run([sys.executable, '-c', script], capture_output=True,
                     text=True, cwd=tmp_path, timeout=300,
                     env=dict(os.environ, PYTHONPATH=REPO))
  assert r.returncode == 0, r.stderr
  assert r.stdout == '(4, 8, 8, 1)\n' and r.stderr == '', (r.stdout, r.stderr)
