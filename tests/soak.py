"""Pre-emption soak: kill a tiny training run at random moments, resume, repeat.

  python tests/soak.py --workdir /tmp/soak --kills 20 [--seed 0]

Each round starts `train.py` on the tiny config, waits until it has made
progress past the last checkpoint, then sends SIGTERM or SIGKILL at a random
moment. After every kill it checks that each checkpoint on disk is readable,
and it records the steps lost. A final run goes to the last step. Because the
batch for step s and the step's key depend only on (seed, s), a step that is
run again after a resume must give exactly the same loss: the soak checks
this for every repeated step in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

from absl import app, flags

_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'configs', 'tiny.py')


@dataclasses.dataclass
class Round:
  signal: str
  returncode: int
  last_logged_step: int
  checkpoint_step: int | None

  @property
  def steps_lost(self) -> int:
    return self.last_logged_step - (self.checkpoint_step or 0)


def _logged(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass  # a line torn by SIGKILL
  return out


def _checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _check_readable(workdir: str, checked: set[int]) -> None:
  """Every finalised checkpoint not yet checked restores completely."""
  from ddpm_jax.pipeline import load  # JAX only here: the kills need none
  for step in _checkpoint_steps(workdir):
    if step not in checked:
      load(workdir, step=step)  # raises CheckpointError if unreadable
      checked.add(step)


def run_soak(workdir: str, kills: int = 20, num_steps: int = 300,
             checkpoint_every: int = 10, seed: int = 0,
             max_delay_s: float = 1.0) -> dict:
  rng = random.Random(seed)
  cmd = [sys.executable, '-m', 'ddpm_jax.cli.train', f'--config={_CONFIG}',
         f'--workdir={workdir}', f'--config.training.num_steps={num_steps}',
         f'--config.training.checkpoint_every={checkpoint_every}',
         '--config.training.log_every=1', '--config.training.keep_checkpoints=3']
  rounds: list[Round] = []
  checked: set[int] = set()
  # Losses of steps logged past the last checkpoint: the next run repeats
  # those steps, and must give exactly the same losses.
  to_repeat: dict[int, float] = {}
  repeats = mismatches = 0

  def compare_repeats():
    nonlocal repeats, mismatches
    for rec in _logged(workdir):
      if rec['step'] in to_repeat:
        repeats += 1
        mismatches += to_repeat.pop(rec['step']) != rec['loss']

  t0 = time.time()
  while len(rounds) < kills:
    resumed_from = (_checkpoint_steps(workdir) or [0])[-1]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = started + 300
    metrics = os.path.join(workdir, 'metrics.jsonl')
    while time.time() < deadline and proc.poll() is None:
      # This process trains once it has rewritten the file (dropping the
      # steps after the checkpoint) and logged a step past the checkpoint.
      if os.path.exists(metrics) and os.path.getmtime(metrics) > started:
        logged = _logged(workdir)
        if logged and logged[-1]['step'] > resumed_from:
          break
      time.sleep(0.05)
    time.sleep(rng.uniform(0, max_delay_s))
    if proc.poll() is not None:
      if _checkpoint_steps(workdir)[-1:] == [num_steps]:
        raise RuntimeError('the run finished before all kills; raise num_steps')
      raise RuntimeError(f'train.py exited on its own: {proc.stderr.read()[-2000:]}')
    sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    if sig == signal.SIGTERM and proc.returncode != 143:   # saved, stopped
      raise RuntimeError(f'SIGTERM gave exit code {proc.returncode}: {err[-2000:]}')
    _check_readable(workdir, checked)
    compare_repeats()
    steps = _checkpoint_steps(workdir)
    logged = _logged(workdir)
    to_repeat.update({r['step']: r['loss'] for r in logged
                      if r['step'] > (steps[-1] if steps else 0)})
    rounds.append(Round(sig.name, proc.returncode,
                        logged[-1]['step'] if logged else 0,
                        steps[-1] if steps else None))
  final = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  if final.returncode:
    raise RuntimeError(f'the final run failed: {final.stderr[-2000:]}')
  _check_readable(workdir, checked)
  compare_repeats()
  logged_steps = [r['step'] for r in _logged(workdir)]
  lost = {k: [r.steps_lost for r in rounds if r.signal == k]
          for k in ('SIGTERM', 'SIGKILL')}
  return {
      'kills': len(rounds),
      'sigterm': len(lost['SIGTERM']), 'sigkill': len(lost['SIGKILL']),
      'sigterm_steps_lost_max': max(lost['SIGTERM'], default=0),
      'sigkill_steps_lost_max': max(lost['SIGKILL'], default=0),
      'sigkill_steps_lost_mean': (sum(lost['SIGKILL']) / len(lost['SIGKILL'])
                                  if lost['SIGKILL'] else 0.0),
      'checkpoint_every': checkpoint_every,
      'final_step': _checkpoint_steps(workdir)[-1],
      'num_steps': num_steps,
      'repeated_steps': repeats, 'repeated_loss_mismatches': mismatches,
      # metrics.jsonl after all the kills: each step once, in order
      'all_steps_logged_once': logged_steps == list(range(1, num_steps + 1)),
      'wall_time_s': round(time.time() - t0, 1),
  }


def main(argv):
  del argv
  f = flags.FLAGS
  print(json.dumps(run_soak(f.workdir, f.kills, f.num_steps, f.checkpoint_every,
                            f.seed), indent=1))


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Empty directory.', required=True)
  flags.DEFINE_integer('kills', 20, 'Number of kills.')
  flags.DEFINE_integer('num_steps', 300, 'Steps of the run.')
  flags.DEFINE_integer('checkpoint_every', 10, 'Save interval.')
  flags.DEFINE_integer('seed', 0, 'Seed of the kill schedule.')
  app.run(main)
