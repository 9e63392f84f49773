"""Trains a DDPM. With no flags: the embedded MNIST-5k default into workdirs/mnist.

  python train.py [--config configs/X.py] [--workdir DIR] [--config.a.b=v ...]
  python -m ddpm_jax.cli.train ...          (the same command)

Running the same command again with the same workdir resumes from the latest
checkpoint.
"""

import os
import signal
import threading

from absl import flags

from ddpm_jax.cli import common

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CONFIG = common.define_config(os.path.join(_REPO, 'configs', 'mnist.py'),
                               'Training config file.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, logs and samples (default: workdirs/<config>).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator', None, 'Multi-host: address:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-host with auto-detection (TPU pods, SLURM).')
_CPU_COLLECTIVES = flags.DEFINE_enum(
    'cpu_collectives', None, ['gloo', 'mpi'], 'Cross-process collectives on CPU.')


_SIGTERM = threading.Event()  # set by a SIGTERM from the moment run() starts


def main() -> None:
  import jax
  from ddpm_jax.train import loop, runtime  # after flag parsing: keeps --help fast
  if _CPU_COLLECTIVES.value:
    jax.config.update('jax_cpu_collectives_implementation', _CPU_COLLECTIVES.value)
  runtime.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                 _PROCESS_ID.value, _DISTRIBUTED.value)
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', os.path.splitext(os.path.basename(common.config_path()))[0])
  summary = loop.train(_CONFIG.value, workdir, sigterm=_SIGTERM)
  if jax.process_index() == 0:
    print(finish_message(_CONFIG.value, workdir, summary))


def finish_message(config, workdir: str, summary: dict) -> str:
  """What the run did, where its images are, and the command to run next."""
  from ddpm_jax.config import model_kind
  kind = model_kind(config)
  status = 'stopped by SIGTERM' if summary['preempted'] else 'done'
  lines = [f"{status}: step {summary['step']}, final loss "
           f"{summary['final_loss']:.4f}, {summary['wall_time_s']:.0f} s"]
  if config.training.num_sample_images:
    what = 'reconstructions' if kind.autoencoder else 'samples'
    lines[0] += f'; {what} in {workdir}/samples'
  if kind.autoencoder:
    lines.append('next: python train.py --config configs/mnist_latent.py '
                 f'--config.latent.autoencoder_workdir={workdir}')
  elif kind.text:
    lines.append(f'next: python sample.py --workdir {workdir} --prompt "a seven" '
                 '--prompt "un tres" --num 16 --out samples.png')
  else:
    lines.append(f'next: python sample.py --workdir {workdir} --out samples.png')
  return '\n'.join(lines)


def run() -> None:
  # Before flag parsing and the slow imports: a SIGTERM while starting is
  # kept, and train() ends with exit 0 before its first step.
  signal.signal(signal.SIGTERM, lambda *_: _SIGTERM.set())
  common.run(main)


if __name__ == '__main__':
  run()
