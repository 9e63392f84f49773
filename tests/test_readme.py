"""Every command of the README's Usage block runs as written, in a fresh
directory after command 1, on a tiny model where the default would be slow.
Only sizes change: the training flags below (after the first training line,
no sample grid: tests/test_cli.py checks it; the trained configs sample in
4 steps and edit in 10), 1000 and 50 sampling steps -> 10 and 5, and 1000
evaluation samples -> 20, to keep the suite short."""

import os
import re
import shlex
import subprocess
import sys

from conftest import REPO

# A 28x28 model small enough to train in seconds: the Usage lines that sample,
# in-paint or evaluate then run on it unchanged.
TINY_FLAGS = ' '.join(shlex.quote(f) for f in (
    '--config.model.ch=8', '--config.model.num_groups=4',
    '--config.model.ch_mult=(1,2)', '--config.model.attn_resolutions=()',
    '--config.training.batch_size=8', '--config.training.warmup_steps=1',
    '--config.training.checkpoint_every=2', '--config.training.log_every=1',
    # the latent-diffusion lines: a small autoencoder, its scale from 256 images
    '--config.autoencoder.ch=8', '--config.autoencoder.num_groups=4',
    '--config.autoencoder.scale_images=256',
    # the text line: a narrower text encoder
    '--config.model.text_dim=16', '--config.model.text_heads=2',
    # what the sampling lines that name no step count run: 4 steps, and
    # in-painting one 10-step block (with its RePaint jumps)
    '--config.sampling.num_steps=4', '--config.sampling.edit_num_steps=10'))


def usage_lines() -> list[str]:
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  block = re.search(r'## Usage\n.*?```bash\n(.*?)```', text, re.S).group(1)
  lines = [l.split('  #')[0].strip() for l in block.splitlines()]
  return [l for l in lines if l and not l.startswith('#')]


def test_usage_block_names_the_shipped_examples():
  lines = usage_lines()
  assert lines[0] == 'python train.py'
  for name in ('examples/digit.png', 'examples/mask.png'):
    assert any(name in l for l in lines) and os.path.isfile(os.path.join(REPO, name))


def test_every_usage_line_runs_as_written(tmp_path):
  from ddpm_jax.config import load_config_file
  default_steps = load_config_file(
      os.path.join(REPO, 'configs', 'mnist.py')).training.num_steps
  for name in ('train.py', 'sample.py', 'configs', 'examples'):
    os.symlink(os.path.join(REPO, name), tmp_path / name)
  env = dict(os.environ, PYTHONPATH=REPO)
  for line in usage_lines():
    cmd = line.replace(f'--checkpoint {default_steps}', '--checkpoint 2')
    cmd = cmd.replace('--steps 1000', '--steps 10').replace('--steps 50', '--steps 5')
    cmd = cmd.replace('--num 1000', '--num 20')
    if cmd.startswith('python train.py'):
      m = re.search(r'--config\.training\.num_steps=\d+', cmd)
      cmd = (cmd.replace(m.group(0), '--config.training.num_steps=4') if m
             else cmd + ' --config.training.num_steps=2')
      grid = 4 if line == 'python train.py' else 0
      cmd += f' {TINY_FLAGS} --config.training.num_sample_images={grid}'
    assert cmd.startswith('python ')
    cmd = shlex.quote(sys.executable) + cmd[len('python'):]
    r = subprocess.run(['bash', '-c', cmd], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f'{line}\n{r.stderr[-3000:]}'
    out = re.search(r'--out (\S+)', line)
    if out:
      assert (tmp_path / out.group(1)).is_file(), line
    if '--npy' in line:
      assert (tmp_path / out.group(1)).with_suffix('.npy').is_file()
    if '--gif' in line:
      assert (tmp_path / out.group(1)).with_suffix('.gif').is_file()
  assert (tmp_path / 'workdirs' / 'mnist' / 'checkpoints' / '4').is_dir()
