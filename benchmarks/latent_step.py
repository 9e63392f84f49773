"""python -m benchmarks.latent_step [--config configs/mnist_latent.py] [--autoencoder workdirs/mnist_autoencoder]

What encoding costs in a latent model's train step. Times, after compiling,
30 calls of the frozen encoder plus a posterior sample on a batch of 32, and
30 whole train steps of the latent config (batches of 32), each loop
dispatched back to back, and prints both and their ratio: the share of the
step that caching the latents once would save at most. Needs the trained
autoencoder (by default the workdir the config names).
"""

from absl import flags
import jax

from benchmarks import common
from ddpm_jax import config as config_lib, data as data_lib, latent, sharding
from ddpm_jax.train import step as step_lib

_CONFIG = flags.DEFINE_string('config', 'configs/mnist_latent.py', 'Latent model config.')
_AUTOENCODER = flags.DEFINE_string(
    'autoencoder', None, "Trained autoencoder's workdir (default: the config's "
    'latent.autoencoder_workdir, workdirs/mnist_autoencoder for the default config).')


def main() -> None:
  c = config_lib.load_config_file(_CONFIG.value)
  if _AUTOENCODER.value:
    c.latent.autoencoder_workdir = _AUTOENCODER.value
  mesh = sharding.make_mesh()
  c, ae = latent.attach_autoencoder(c, mesh)
  to_latent = step_lib.latent_encoder(c)
  src = data_lib.load_source(c.data)
  b = data_lib.Batches(src, 32, 0, 0, 1)
  f = jax.jit(lambda p, im, k: to_latent(p, data_lib.preprocess(im, 32, False, None, 'pad'), k))
  x = b.batch(0)['image']
  jax.block_until_ready(f(ae, x, jax.random.key(0)))
  enc = common.loop_seconds(lambda i: f(ae, b.batch(i)['image'], jax.random.key(i)), 30)
  setup, state = step_lib.init_train_state(c, ae)
  state = sharding.replicate(state, mesh)
  stepf = step_lib.make_train_step(setup, mesh)
  state = [state]

  def train(i):
    state[0], m = stepf(state[0], sharding.shard_batch(b.batch(i), mesh))
    return m
  jax.block_until_ready(train(0))
  st = common.loop_seconds(train, 30, start=1)
  print(f'encoder+posterior sample per batch of 32: {1000*enc:.1f} ms; whole latent train step: {1000*st:.1f} ms; share {enc/st:.0%}')


if __name__ == '__main__':
  common.run(main)
