"""python -m experiments.recipes --budget 150 --recipes base,small --out /tmp/recipes.jsonl

Training recipes side by side at equal wall-clock time on this CPU. Each
recipe is `base_config()` (the paper's recipe at MNIST size), or the config
file its key 'config' names, plus a few overrides (RECIPES; `--extra` adds
one). It trains in a fresh workdir under `--root` until `--budget` seconds
have passed since `train()` was called (start-up and compilation count: a
user waits for them too), stopping through the same event a SIGTERM sets,
so the last step is checkpointed. Then `evaluate` draws `--num` samples
with the given sampler and reports the LeNet FD, the confident share (and
the held-out real images'), and the class entropy. One JSON line per recipe
(with the CPU, JAX version and date) is printed and appended to `--out`.

  python -m experiments.recipes --probe --recipes base,small,patch2_v

only times each recipe's jitted train step after compiling (no training
run, no evaluation) and prints one JSON line per recipe.
"""

import json
import os
import shutil
import threading
import time

from absl import flags

from benchmarks import common

SMALL = {'model.ch': 16, 'model.num_groups': 4, 'model.ch_mult': (1, 2, 4),
         'model.num_res_blocks': 1, 'model.attn_resolutions': (7,)}
PATCH2 = {'model.patch_size': 2, 'model.ch': 32, 'model.ch_mult': (1, 2),
          'model.num_res_blocks': 1, 'model.attn_resolutions': (7,)}
RECIPES = {
    # base_config(): ch 32, (1, 2, 2), 2 blocks, attention at 14x14, batch 32
    'base': {},
    'wide_1block': {'model.num_res_blocks': 1, 'model.attn_resolutions': ()},
    # ch 16, (1, 2, 4), 1 block, attention at 7x7: 3.1x the images/s of base
    'small': SMALL,
    'small_b64': {**SMALL, 'training.batch_size': 64},
    'small_b16': {**SMALL, 'training.batch_size': 16},
    'small_lr4e-3': {**SMALL, 'training.learning_rate': 4e-3},
    'small_lr1e-3': {**SMALL, 'training.learning_rate': 1e-3},
    'small_ema99': {**SMALL, 'training.ema_decay': 0.99},
    'small_cosine': {**SMALL, 'diffusion.schedule': 'cosine'},
    'small_minsnr5': {**SMALL, 'diffusion.loss_weighting': 'min_snr'},
    'small_v': {**SMALL, 'diffusion.prediction': 'v'},
    'small_x0': {**SMALL, 'diffusion.prediction': 'x0'},
    'small_v_minsnr5': {**SMALL, 'diffusion.prediction': 'v',
                        'diffusion.loss_weighting': 'min_snr'},
    'small_dropout': {**SMALL, 'model.dropout': 0.1},
    # 2x2 patches folded into channels: ch 32, (1, 2) at 14x14 and 7x7
    'patch2_v': {**PATCH2, 'diffusion.prediction': 'v'},
    'patch2_v_minsnr5': {**PATCH2, 'diffusion.prediction': 'v',
                         'diffusion.loss_weighting': 'min_snr'},
    'patch2_v_ema99': {**PATCH2, 'diffusion.prediction': 'v', 'training.ema_decay': 0.99},
    'patch2_eps_minsnr5': {**PATCH2, 'diffusion.loss_weighting': 'min_snr'},
    # cosine learning-rate decay to 0 at the step count the budget reaches
    'small_v_cos': {**SMALL, 'diffusion.prediction': 'v',
                    'training.lr_decay': 'cosine', 'training.num_steps': 620},
    'small_v_b16': {**SMALL, 'diffusion.prediction': 'v', 'training.batch_size': 16},
    # class labels; evaluated with labels 0-9 in turn at guidance scale 3
    'small_v_cond': {**SMALL, 'diffusion.prediction': 'v',
                     'model.class_conditional': True, 'sampling.guidance_scale': 3.0},
    # latent vs pixel at equal wall-clock: the default and the latent default
    # (whose autoencoder, workdirs/mnist_autoencoder, must be trained first)
    'pixel_default': {'config': 'configs/mnist.py'},
    'latent_default': {'config': 'configs/mnist_latent.py'},
}

_BUDGET = flags.DEFINE_float('budget', 100.0, 'Seconds of training per recipe '
                             '(start-up and compilation included).')
_RECIPES = flags.DEFINE_list('recipes', ['base'], 'Recipes (names in RECIPES): '
                             + ', '.join(RECIPES) + '.')
_EXTRA = flags.DEFINE_string('extra', '', 'One custom recipe: name:a.b=1;c.d=x '
                             '(values parsed as JSON where they can be).')
_ROOT = flags.DEFINE_string('root', '/tmp/recipes', 'Folder of the recipes\' workdirs '
                            '(each replaced).')
_NUM = flags.DEFINE_integer('num', 1000, 'Samples of the evaluation.')
_SAMPLER = flags.DEFINE_string('sampler', 'dpm++2m', 'Sampler of the evaluation.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Sampling steps of the evaluation.')
_OUT = flags.DEFINE_string('out', None, 'JSON-lines file to append to.')
_PROBE = flags.DEFINE_bool('probe', False, "Only time each recipe's train step "
                           '(no training run).')
flags.register_validator('recipes', lambda names: all(n in RECIPES for n in names),
                         'unknown recipe (see --help for the names)')
flags.register_validator('extra', lambda e: not e or ':' in e and '=' in e,
                         'expected name:a.b=1;c.d=x')


def recipe_config(overrides: dict):
  """base_config (or the config file named by the key 'config') plus the
  dotted overrides."""
  from ddpm_jax.config import base_config, load_config_file
  overrides = dict(overrides)
  path = overrides.pop('config', None)
  config = load_config_file(path) if path else base_config()
  for dotted, value in overrides.items():
    *path, leaf = dotted.split('.')
    node = config
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


def parse_overrides(text: str) -> dict:
  """'a.b=1;c.d=x' (values parsed as JSON where they can be) -> dict."""
  out = {}
  for item in filter(None, text.split(';')):
    k, v = item.split('=', 1)
    try:
      out[k] = json.loads(v)
    except json.JSONDecodeError:
      out[k] = v
    if isinstance(out[k], list):
      out[k] = tuple(out[k])
  return out


def run_recipe(name: str, overrides: dict, budget: float, root: str, num: int,
               sampler: str, steps: int) -> dict:
  from ddpm_jax.metrics.report import evaluate
  from ddpm_jax.train.loop import train
  config = recipe_config(overrides)
  if 'training.num_steps' not in overrides:  # the budget stops it
    config.training.num_steps = 10 ** 7
  config.training.checkpoint_every = 10 ** 7
  config.training.log_every = 25
  workdir = os.path.join(root, name)
  shutil.rmtree(workdir, ignore_errors=True)
  stop = threading.Event()
  timer = threading.Timer(budget, stop.set)
  t0 = time.time()
  timer.start()
  summary = train(config, workdir, progress=False, stop=stop)
  timer.cancel()
  wall = time.time() - t0
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    last = [json.loads(line) for line in f][-4:]
  loss = sum(r['loss'] for r in last) / len(last)
  report, _ = evaluate(workdir, num=num, sampler=sampler, num_steps=steps,
                       progress=False)   # guidance: the config's
  return {'recipe': name, 'overrides': {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in overrides.items()},
          'steps': summary['step'], 'train_wall_s': round(wall, 1),
          'params': summary['num_params'], 'loss_last_100': round(loss, 4),
          'fd': round(report['fd'], 1), 'fd_floor': round(report['fd_real_vs_real_floor'], 1),
          'confident_share': report['confident_share'],
          'real_confident_share': report['real_confident_share'],
          'class_entropy_bits': round(report['class_entropy_bits'], 3),
          'sampler': f'{sampler}-{steps}', 'guidance_scale': float(config.sampling.guidance_scale),
          'requested_class_accuracy': report.get('requested_class_accuracy'),
          'sampling_s': report['sampling_seconds'], **common.header()}


def probe_step_time(name: str, overrides: dict, steps: int = 15) -> dict:
  """The jitted train step's own time after compilation (no loop, no I/O)."""
  from ddpm_jax import data as data_lib
  from ddpm_jax import sharding
  from ddpm_jax.train import step as step_lib
  from ddpm_jax import config as config_lib, latent
  config = recipe_config(overrides)
  mesh = sharding.make_mesh()
  ae_params = None
  if config_lib.model_kind(config).latent:
    config, ae_params = latent.attach_autoencoder(config, mesh)
  setup, state = step_lib.init_train_state(config, ae_params)
  state = sharding.replicate(state, mesh)
  batches = data_lib.Batches(data_lib.load_source(config.data),
                             config.training.batch_size, 0, 0, 1)
  step = step_lib.make_train_step(setup, mesh)
  state = [state]

  def train(i):
    state[0], m = step(state[0], sharding.shard_batch(batches.batch(i), mesh))
    return m
  _, (compile_s,) = common.timed(train, 0, warmup=False)
  dt = common.loop_seconds(train, steps, start=1)
  return {'recipe': name, 'params': setup.num_params, 'first_step_s': round(compile_s, 1),
          'step_ms': round(1000 * dt), 'images_per_s': round(config.training.batch_size / dt),
          **common.header()}


def main() -> None:
  recipes = {n: RECIPES[n] for n in _RECIPES.value}
  if _EXTRA.value:
    n, o = _EXTRA.value.split(':', 1)
    recipes[n] = parse_overrides(o)
  if _PROBE.value:
    for name, overrides in recipes.items():
      print(json.dumps(probe_step_time(name, overrides)), flush=True)
    return
  for name, overrides in recipes.items():
    row = run_recipe(name, overrides, _BUDGET.value, _ROOT.value, _NUM.value,
                     _SAMPLER.value, _STEPS.value)
    print(json.dumps(row), flush=True)
    if _OUT.value:
      common.append_jsonl(_OUT.value, row)


if __name__ == '__main__':
  common.run(main)
