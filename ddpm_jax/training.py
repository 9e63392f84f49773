"""Train state, optimizer and the jitted, data-parallel train step.

The step is `jax.jit` over a ('data',) mesh: the global batch is sharded on
its leading axis and the state is replicated, so XLA inserts the gradient
all-reduce. This works the same on one device, many devices, and many hosts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import data as data_lib
from ddpm_jax import diffusion
from ddpm_jax.model import build_model, make_apply, split_model
from ddpm_jax.schedules import Schedule, get_betas, make_schedule
from ddpm_jax.xla_options import compiler_options


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  step: jax.Array          # int32 scalar
  params: Any              # pure dict of arrays
  ema_params: Any
  opt_state: Any
  rng: jax.Array           # typed key; step keys are fold_in(rng, step)


def make_optimizer(t_cfg) -> optax.GradientTransformation:
  """Adam with linear warm-up to a constant rate, after global-norm clipping."""
  lr = optax.schedules.warmup_constant_schedule(0.0, t_cfg.learning_rate,
                                                max(t_cfg.warmup_steps, 1))
  return optax.chain(optax.clip_by_global_norm(t_cfg.grad_clip), optax.adam(lr))


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), ('data',))


def betas_from_config(config) -> np.ndarray:
  d = config.diffusion
  return get_betas(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)


def schedule_from_config(config) -> Schedule:
  return make_schedule(betas_from_config(config))


@dataclasses.dataclass
class Setup:
  """Everything static built from a config: graphdef, apply, optimizer."""
  config: Any
  graphdef: Any
  apply: Callable
  tx: optax.GradientTransformation
  schedule: Schedule
  num_params: int


def init_model_and_state(config) -> tuple[Setup, TrainState]:
  """Builds the UNet and a fresh train state on the host."""
  d = config.data
  model = build_model(config.model, d.image_size, d.channels, d.num_classes,
                      seed=config.seed)
  graphdef, params_state = split_model(model)
  params = nnx.to_pure_dict(params_state)
  tx = make_optimizer(config.training)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     ema_params=jax.tree.map(jnp.copy, params),
                     opt_state=tx.init(params),
                     rng=jax.random.key(config.seed))
  setup = Setup(config, graphdef, make_apply(graphdef), tx,
                schedule_from_config(config),
                sum(int(x.size) for x in jax.tree.leaves(params)))
  return setup, state


def abstract_state(config) -> tuple[Setup, TrainState]:
  """Setup and the state's shapes without allocating parameters."""
  holder = {}

  def build():
    setup, state = init_model_and_state(config)
    holder['setup'] = setup
    return state
  shapes = jax.eval_shape(build)
  # The schedule built inside eval_shape is abstract: rebuild it concretely.
  setup = dataclasses.replace(holder['setup'], schedule=schedule_from_config(config))
  return setup, shapes


def _to_global(x, sharding: NamedSharding) -> jax.Array:
  """A host value (the same on every process) as a global array; works when
  the mesh spans devices of other processes, where device_put cannot."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _to_global(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(state: TrainState, mesh: Mesh) -> TrainState:
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: _to_global(x, sharding), state)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the global batch → one global sharded array."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def make_train_step(setup: Setup, mesh: Mesh) -> Callable:
  """train_step(state, batch) -> (state, metrics), jitted and donating state.

  A non-finite loss or gradient leaves the state untouched (metrics report
  `finite = 0`) so the host can stop or skip without losing good weights.
  """
  config = setup.config
  t_cfg, d_cfg = config.training, config.data
  conditional = bool(config.model.class_conditional)
  apply, tx, schedule = setup.apply, setup.tx, setup.schedule

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    key = jax.random.fold_in(state.rng, state.step)
    k_drop, k_loss, k_flip, k_label = jax.random.split(key, 4)
    x0 = data_lib.preprocess(batch['image'], d_cfg.image_size,
                             d_cfg.random_flip, k_flip)
    y = None
    if conditional:
      drop = jax.random.bernoulli(k_label, t_cfg.label_dropout, batch['label'].shape)
      y = jnp.where(drop, d_cfg.num_classes, batch['label'])

    def loss_fn(params):
      eps_fn = lambda x, t: apply(params, x, t, y, k_drop)
      return diffusion.l_simple(eps_fn, schedule, x0, k_loss)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(t_cfg.ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                       state.ema_params, params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        ema_params=keep(ema, state.ema_params),
        opt_state=keep(opt_state, state.opt_state),
        rng=state.rng)
    metrics = {'loss': loss, 'grad_norm': grad_norm,
               'finite': finite.astype(jnp.int32)}
    return new_state, metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, donate_argnames='state',
                 out_shardings=(replicated, replicated),
                 compiler_options=compiler_options())


if __name__ == '__main__':
  # python -m ddpm_jax.training configs/*.py  -> parameter count of each config
  import sys
  from ddpm_jax.config import load_config_file
  for path in sys.argv[1:]:
    print(f'{path}: {abstract_state(load_config_file(path))[0].num_params:,} parameters')
