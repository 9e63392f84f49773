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
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import builders
from ddpm_jax import captions as captions_lib
from ddpm_jax import config as config_lib
from ddpm_jax import data as data_lib
from ddpm_jax import latent as latent_lib
from ddpm_jax import sampling
from ddpm_jax.models.autoencoder import make_ae_fns, make_ae_loss
from ddpm_jax.models.layers import count_params, split_params
from ddpm_jax.models.unet import make_apply
from ddpm_jax.schedules import Schedule
from ddpm_jax.xla_options import compiler_options


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  step: jax.Array          # int32 scalar
  params: Any              # pure dict of arrays
  ema_params: Any
  opt_state: Any
  rng: jax.Array           # typed key; step keys are fold_in(rng, step)
  autoencoder: Any = None  # a latent model's frozen autoencoder parameters

  def to_saveable(self) -> dict[str, Any]:
    """The dict the checkpoint stores (the key as its raw data)."""
    d = {'step': self.step, 'params': self.params,
         'ema_params': self.ema_params, 'opt_state': self.opt_state,
         'rng': jax.random.key_data(self.rng)}
    if self.autoencoder is not None:
      d['autoencoder'] = self.autoencoder
    return d

  @classmethod
  def from_saveable(cls, d: dict[str, Any]) -> 'TrainState':
    return cls(step=d['step'], params=d['params'], ema_params=d['ema_params'],
               opt_state=d['opt_state'], rng=jax.random.wrap_key_data(d['rng']),
               autoencoder=d.get('autoencoder'))


def learning_rate_schedule(t_cfg) -> optax.Schedule:
  """A linear warm-up to the learning rate, then constant (lr_decay 'none')
  or a cosine decay to 0 at `num_steps` ('cosine')."""
  warmup = max(t_cfg.warmup_steps, 1)
  if t_cfg.get('lr_decay', 'none') == 'cosine':
    return optax.schedules.warmup_cosine_decay_schedule(
        0.0, t_cfg.learning_rate, warmup, max(t_cfg.num_steps, warmup + 1))
  return optax.schedules.warmup_constant_schedule(0.0, t_cfg.learning_rate, warmup)


def make_optimizer(t_cfg) -> optax.GradientTransformation:
  """Adam after global-norm clipping, at `learning_rate_schedule`. The
  optimizer state is the same for every schedule."""
  return optax.chain(optax.clip_by_global_norm(t_cfg.grad_clip),
                     optax.adam(learning_rate_schedule(t_cfg)))


# objective(params, autoencoder_params, x_BHWC in [-1, 1], y_B or None,
#   step_key) -> (loss, {name: scalar}) of one batch.
Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass
class Setup:
  """Everything static built from a config: graphdef, objective, optimizer.
  For diffusion, `apply` returns the network's raw output
  (config.diffusion.prediction) and `eps_apply` ε, for the samplers; for
  the autoencoder both are None and `ae` holds its encode/decode."""
  config: Any
  graphdef: Any
  objective: Objective
  apply: Callable | None
  eps_apply: Callable | None
  ae: Any
  tx: optax.GradientTransformation
  schedule: Schedule | None
  num_params: int


def init_train_state(config, autoencoder_params: Any = None
                     ) -> tuple[Setup, TrainState]:
  """Builds the model and a fresh train state on the host; a latent model
  gets its (frozen) autoencoder's parameters."""
  kind = config_lib.model_kind(config)
  graphdef, params_state = split_params(builders.model_from_config(config))
  params = nnx.to_pure_dict(params_state)
  tx = make_optimizer(config.training)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     ema_params=jax.tree.map(jnp.copy, params),
                     opt_state=tx.init(params),
                     rng=sampling.seed_key(config.seed),
                     autoencoder=autoencoder_params)
  num_params = count_params(params)
  if kind.autoencoder:
    fns = make_ae_fns(graphdef)
    a = config.autoencoder
    ae_loss = make_ae_loss(fns, a.loss, a.kl_weight)

    def objective(params, _, x, y, key):
      loss, (rec, kl) = ae_loss(params, x, jax.random.split(key, 4)[1])
      return loss, {'reconstruction': rec, 'kl': kl}
    return Setup(config, graphdef, objective, None, None, fns, tx, None,
                 num_params), state
  apply = make_apply(graphdef)
  schedule = builders.schedule_from_config(config)
  loss_of = builders.loss_from_config(config, schedule)
  to_latent = latent_encoder(config) if kind.latent else None

  def objective(params, ae_params, x, y, key):
    k_drop, k_loss = jax.random.split(key, 4)[:2]
    if to_latent is not None:
      x = to_latent(ae_params, x, jax.random.fold_in(key, 4))
    out_fn = lambda x_t, t: apply(params, x_t, t, y, k_drop)
    return loss_of(out_fn, x, k_loss), {}
  return Setup(config, graphdef, objective, apply,
               builders.eps_apply_from_config(config, apply, schedule),
               None, tx, schedule, num_params), state


def latent_encoder(config) -> Callable:
  """to_latent(ae_params, x_BHWC, key): a sample of the frozen encoder's
  posterior, times the latent scale (what a latent model denoises)."""
  encode = latent_lib.autoencoder_fns(config.autoencoder,
                                      config.data.channels).encode
  scale = float(config.latent.scale)

  def to_latent(ae_params, x_BHWC, key):
    z = encode(jax.lax.stop_gradient(ae_params), x_BHWC).sample(key)
    return scale * z
  return to_latent


def make_accumulate(objective: Objective, k: int) -> Callable:
  """accumulate(params, ae_params, x0_B..., y_B... or None, key) ->
  (loss, aux, grads) of the whole batch. With k > 1 the batch is split into
  k micro-batches of B/k (example j*k + i goes to micro-batch i, so each
  device keeps its own rows), run one after another in a `lax.scan` (only
  one micro-batch's activations live at a time), micro-batch i with key
  fold_in(key, i); loss, aux and gradients are their means, which for equal
  micro-batches is the whole batch's mean."""
  grad_fn = jax.value_and_grad(objective, has_aux=True)
  if k == 1:
    def one(params, ae_params, x0, y, key):
      (loss, aux), grads = grad_fn(params, ae_params, x0, y, key)
      return loss, aux, grads
    return one

  def split(a):  # (B, ...) -> (k, B/k, ...)
    return jnp.moveaxis(a.reshape((a.shape[0] // k, k) + a.shape[1:]), 1, 0)

  def accumulate(params, ae_params, x0, y, key):
    xs = jax.tree.map(split, (x0, y))

    def micro(total, inputs):
      i, (x_i, y_i) = inputs
      (loss, aux), grads = grad_fn(params, ae_params, x_i, y_i,
                                   jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, total, (loss, aux, grads)), None

    shapes = jax.eval_shape(lambda: grad_fn(params, ae_params, *jax.tree.map(
        lambda a: a[0], xs), key))
    (loss, aux), grads = shapes
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (loss, aux, grads))
    total, _ = jax.lax.scan(micro, zeros, (jnp.arange(k), xs))
    return jax.tree.map(lambda a: a / k, total)
  return accumulate


def make_train_step(setup: Setup, mesh: Mesh) -> Callable:
  """train_step(state, batch) -> (state, metrics), jitted and donating state.

  A non-finite loss, gradient, updated parameter or EMA value leaves the
  state untouched (metrics report `finite = 0`), so the host can stop or skip
  and no checkpoint ever holds a non-finite value.
  """
  config = setup.config
  t_cfg, d_cfg = config.training, config.data
  kind = config_lib.model_kind(config)
  conditional, text = kind.classes, kind.text
  own_captions = text and d_cfg.captions == 'folder'   # batch['tokens']
  if text:  # every training caption of every class, and the empty prompt
    if not own_captions:
      table = jnp.asarray(captions_lib.caption_table(d_cfg.captions,
                                                     config.model.text_max_len))
    empty = jnp.asarray(builders.null_condition(config, 1))
  objective, tx = setup.objective, setup.tx
  accumulate = make_accumulate(objective, t_cfg.get('grad_accum_steps', 1))

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    key = jax.random.fold_in(state.rng, state.step)
    _, _, k_flip, k_label = jax.random.split(key, 4)  # objectives take the
    # first two of this split: the pixel model's keys are what they always were
    x0 = data_lib.preprocess(batch['image'], d_cfg.image_size,
                             d_cfg.random_flip, k_flip, d_cfg.resize)
    y = None
    if conditional or text:  # dropped (for guidance): the null label or prompt
      label = batch['label']
      drop = jax.random.bernoulli(k_label, t_cfg.label_dropout, label.shape)
      if own_captions:  # the image's own caption, or the empty one
        y = jnp.where(drop[:, None], empty, batch['tokens'])
      elif text:  # a random caption of each image's class, or the empty one
        pick = jax.random.randint(jax.random.fold_in(k_label, 1), label.shape,
                                  0, table.shape[1])
        y = jnp.where(drop[:, None], empty, table[label, pick])
      else:
        y = jnp.where(drop, d_cfg.num_classes, label)

    loss, aux, grads = accumulate(state.params, state.autoencoder, x0, y, key)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(t_cfg.ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                       state.ema_params, params)
    # Finite old params + a finite update give finite new params and EMA
    # (one norm, like grad_norm: per-leaf checks cost ~60 s of compile here).
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(updates)))
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        ema_params=keep(ema, state.ema_params),
        opt_state=keep(opt_state, state.opt_state),
        rng=state.rng, autoencoder=state.autoencoder)
    metrics = {'loss': loss, 'grad_norm': grad_norm,
               'finite': finite.astype(jnp.int32), **aux}
    return new_state, metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, donate_argnames='state',
                 out_shardings=(replicated, replicated),
                 compiler_options=compiler_options())
