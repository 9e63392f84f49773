"""Trains a DDPM. With no flags: the embedded MNIST-5k default into workdirs/mnist.

  python train.py [--config configs/X.py] [--workdir DIR] [--config.a.b=v ...]
  python -m ddpm_jax.cli.train ...          (the same command)
  ddpm-train --config mnist ...             (installed; a shipped config by name)

Running it again with the same workdir resumes from the latest checkpoint;
without --config it resumes with the config stored in that checkpoint (and
any --config.a.b=v overrides, checked as on every resume).

Exit status: 0 finished; 130 stopped by Ctrl-C (SIGINT) and 143 by SIGTERM,
after saving the last finished step (run the same command to resume; a
second Ctrl-C stops at once without saving); 2 a mistake in the input (one
`error:` line); 1 any other failure.
"""

import os
import signal
import sys
import threading

from absl import flags

from ddpm_jax.cli import common

_CONFIG = common.define_config(
    common.shipped_configs()['mnist'],
    'Training config: a file, or the name of a shipped config (mnist, '
    'cifar10, tiny, ...: the files of configs/).')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, logs and samples (default: workdirs/<config>).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator', None, 'Multi-host: address:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-host with auto-detection (TPU pods, SLURM).')
_PROFILE = flags.DEFINE_list(
    'profile_steps', None, 'A,B: a jax.profiler trace of steps A+1..B into '
    '<workdir>/plugins/profile (TensorBoard\'s profile plugin).')
_CPU_COLLECTIVES = flags.DEFINE_enum(
    'cpu_collectives', None, ['gloo', 'mpi'], 'Cross-process collectives on CPU.')


# Set by the first SIGTERM or SIGINT from the moment run() starts (the name
# in .signal_name); training saves its last finished step and returns.
_STOP = threading.Event()
_STOP.signal_name = None


def _on_signal(signum, frame) -> None:
  if signum == signal.SIGINT and _STOP.is_set():  # a second Ctrl-C: stop now
    os.write(2, b'\nerror: interrupted again; stopped without saving\n')
    os._exit(130)
  _STOP.signal_name = signal.Signals(signum).name
  _STOP.set()


def _config(workdir: str | None):
  """The --config file's config; or, when --config is not given and the
  workdir holds a checkpoint, the config stored there with the
  --config.a.b=v overrides applied."""
  config = _CONFIG.value
  from ddpm_jax import files
  if flags.FLAGS['config'].present or not workdir or not files.isdir(
      files.join(workdir, 'checkpoints')):
    return config
  from ml_collections import config_flags
  from ddpm_jax.checkpoint import Checkpointer
  from ddpm_jax.config import config_from_dict
  with Checkpointer(workdir, read_only=True) as ckpt:
    if ckpt.latest_step() is None:
      return config
    # A damaged newest step is set aside (with its warning) by the trainer.
    _, (_, meta) = ckpt.newest_readable(ckpt.read_meta, warn=False)
  stored = config_from_dict(meta['config'])
  stored.update_from_flattened_dict(
      config_flags.get_override_values(flags.FLAGS['config']))
  return stored


def main() -> None:
  import jax
  from ddpm_jax.train import loop, runtime  # after flag parsing: keeps --help fast
  if _CPU_COLLECTIVES.value:
    jax.config.update('jax_cpu_collectives_implementation', _CPU_COLLECTIVES.value)
  runtime.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                 _PROCESS_ID.value, _DISTRIBUTED.value)
  common.report_backend()
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', os.path.splitext(os.path.basename(common.config_path()))[0])
  config = _config(_WORKDIR.value)
  summary = loop.train(config, workdir, stop=_STOP,
                       profile_steps=_profile_steps())
  if jax.process_index() == 0:
    print(finish_message(config, workdir, summary), flush=True)
  if summary['preempted']:
    sys.exit(runtime.EXIT_STATUS[summary['signal']])


def _profile_steps() -> tuple[int, int] | None:
  from ddpm_jax.errors import UserError
  if _PROFILE.value is None:
    return None
  try:
    a, b = (int(v) for v in _PROFILE.value)
  except ValueError:
    a = b = -1
  if not 0 <= a < b:
    raise UserError(f'--profile_steps takes two steps A,B with 0 <= A < B, got '
                    f'{",".join(_PROFILE.value)}')
  return a, b


def finish_message(config, workdir: str, summary: dict) -> str:
  """What the run did, where its images are, and the command to run next."""
  from ddpm_jax.config import model_kind
  kind = model_kind(config)
  if summary['preempted']:
    saved = (f"saved the checkpoint of step {summary['step']}"
             if summary['steps_run'] else
             f"nothing trained since step {summary['step']}")
    return (f"stopped by {summary['signal']}: {saved}; run the same command "
            'to resume')
  lines = [f"done: step {summary['step']}, final loss "
           f"{summary['final_loss']:.4f}, {summary['wall_time_s']:.0f} s"]
  if config.training.num_sample_images:
    what = 'reconstructions' if kind.autoencoder else 'samples'
    lines[0] += f'; {what} in {workdir}/samples'
  if kind.autoencoder:
    lines.append('next: python train.py --config configs/mnist_latent.py '
                 f'--config.latent.autoencoder_workdir={workdir}')
  elif kind.text and config.data.captions == 'folder':
    lines.append(f'next: python sample.py --workdir {workdir} --prompt "..." '
                 '--out samples.png   (one of your captions, or a new one)')
  elif kind.text:
    lines.append(f'next: python sample.py --workdir {workdir} --prompt "a seven" '
                 '--prompt "un tres" --num 16 --out samples.png')
  else:
    lines.append(f'next: python sample.py --workdir {workdir} --out samples.png')
  return '\n'.join(lines)


def run() -> None:
  # Before flag parsing and the slow imports: a signal while starting is
  # kept, and train() returns before its first step.
  signal.signal(signal.SIGTERM, _on_signal)
  signal.signal(signal.SIGINT, _on_signal)
  common.run(main)


if __name__ == '__main__':
  run()
