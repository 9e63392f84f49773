"""Trains a DDPM. With no flags: the embedded MNIST-5k default into workdirs/mnist.

  python train.py [--config configs/X.py] [--workdir DIR] [--config.a.b=v ...]

Running the same command again with the same workdir resumes from the latest
checkpoint.
"""

import os

from absl import flags

from ddpm_jax import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = cli.define_config(os.path.join(_HERE, 'configs', 'mnist.py'),
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


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  from ddpm_jax import trainer  # after flag parsing: keeps --help fast
  if _CPU_COLLECTIVES.value:
    import jax
    jax.config.update('jax_cpu_collectives_implementation', _CPU_COLLECTIVES.value)
  trainer.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                       _PROCESS_ID.value, _DISTRIBUTED.value)
  config_path = flags.FLAGS['config'].config_filename.split(':')[0]
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', os.path.splitext(os.path.basename(config_path))[0])
  summary = trainer.train(_CONFIG.value, workdir)
  status = 'stopped by SIGTERM' if summary['preempted'] else 'done'
  print(f"{status}: step {summary['step']}, final loss "
        f"{summary['final_loss']:.4f}, {summary['wall_time_s']:.0f} s; "
        f"samples in {workdir}/samples")


if __name__ == '__main__':
  cli.run(main)
