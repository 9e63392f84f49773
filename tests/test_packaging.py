"""The installed package: a non-editable wheel in a fresh venv, its console
scripts, the shipped configs by name, and the backend line."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO


def _env():
  env = dict(os.environ)
  env.pop('PYTHONPATH', None)
  return env


@pytest.mark.slow
def test_wheel_installs_and_runs_from_another_directory(tmp_path):
  # Build from a copy, so the checkout gets no build/ or egg-info folders.
  src = tmp_path / 'src'
  for name in ('ddpm_jax', 'configs'):
    shutil.copytree(os.path.join(REPO, name), src / name,
                    ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO, name), src / name)
  dist = tmp_path / 'dist'
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                  '--no-build-isolation', '-w', str(dist), str(src)],
                 check=True, capture_output=True, timeout=300)
  wheel, = dist.glob('ddpm_jax-*.whl')

  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)],
                 check=True, timeout=120)
  py = venv / 'bin' / 'python'
  subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install',
                  '-q', '--no-deps', '--no-index', str(wheel)],
                 check=True, capture_output=True, timeout=300)
  # The dependencies come from the test venv (appended to sys.path after the
  # fresh venv's own site-packages; its editable ddpm_jax hook is not run).
  site = subprocess.run([str(py), '-c', 'import sysconfig; print('
                         'sysconfig.get_paths()["purelib"])'],
                        check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, '_deps.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')

  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  where = subprocess.run([str(py), '-c', 'import ddpm_jax; print(ddpm_jax.__file__)'],
                         cwd=elsewhere, env=_env(), check=True,
                         capture_output=True, text=True).stdout
  assert where.startswith(site), where

  train = subprocess.run([str(venv / 'bin' / 'ddpm-train'), '--config', 'tiny',
                          '--workdir', 'w'], cwd=elsewhere, env=_env(),
                         capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  assert train.stdout.startswith('backend: cpu, 1 x cpu'), train.stdout
  assert 'process 0 of 1' in train.stdout.splitlines()[0]
  assert (elsewhere / 'w' / 'checkpoints').is_dir()

  sample = subprocess.run([str(venv / 'bin' / 'ddpm-sample'), '--workdir', 'w',
                           '--num', '4', '--out', 's.png'], cwd=elsewhere,
                          env=_env(), capture_output=True, text=True, timeout=600)
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert (elsewhere / 's.png').stat().st_size > 0

  helped = subprocess.run([str(venv / 'bin' / 'ddpm-evaluate'), '--help'],
                          cwd=elsewhere, env=_env(), capture_output=True,
                          text=True, timeout=120)
  assert helped.returncode == 0 and '--workdir' in helped.stdout


def test_config_by_name_and_unknown_name(tmp_path):
  from ddpm_jax.cli import common
  shipped = common.shipped_configs()
  assert {'mnist', 'cifar10', 'tiny'} <= set(shipped)
  assert os.path.samefile(shipped['cifar10'], os.path.join(REPO, 'configs', 'cifar10.py'))
  assert common._with_config_paths(['x', '--config', 'tiny']) == ['x', '--config', shipped['tiny']]
  assert common._with_config_paths(['x', '--config=tiny.py:a']) == ['x', f'--config={shipped["tiny"]}:a']
  own = tmp_path / 'tiny'   # a file of that name wins over the shipped one
  own.write_text('')
  assert common._with_config_paths(['x', f'--config={own}']) == ['x', f'--config={own}']
  r = subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), '--config',
                      'mnits', '--workdir', str(tmp_path / 'w')],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert r.stderr.strip().startswith('error: config file mnits does not exist '
                                     '(shipped configs: '), r.stderr
  assert 'mnist' in r.stderr and not (tmp_path / 'w').exists()


def test_backend_line_and_gpu_warning(monkeypatch, capsys):
  from ddpm_jax.cli import common
  common.report_backend()
  out, err = capsys.readouterr()
  assert out == 'backend: cpu, 4 x cpu (of 4 in all), process 0 of 1\n'
  assert err == ''
  monkeypatch.setattr(common, 'nvidia_gpu_present', lambda: True)
  common.report_backend()
  out, err = capsys.readouterr()
  assert err.startswith('warning: an NVIDIA GPU is present but JAX runs on the CPU')
  assert ".[cuda12]" in err


def test_jax_warnings_show_and_absl_info_does_not(tmp_path):
  script = tmp_path / 'warn_command.py'
  script.write_text(
      'import logging\n'
      'from absl import logging as absl_logging\n'
      'from ddpm_jax.cli import common\n'
      'def main():\n'
      '  logging.getLogger("jax._src.xla_bridge").warning("JAX-WARNING")\n'
      '  absl_logging.info("ABSL-INFO")\n'
      '  absl_logging.warning("ABSL-WARNING")\n'
      'common.run(main)\n')
  r = subprocess.run([sys.executable, str(script)], capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert 'JAX-WARNING' in r.stderr
  assert 'ABSL-INFO' not in r.stderr and 'ABSL-WARNING' not in r.stderr
