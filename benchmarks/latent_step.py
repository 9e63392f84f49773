"""What encoding costs in a latent model's train step.

  python benchmarks/latent_step.py      # needs workdirs/mnist_autoencoder

Times, after compiling, 30 calls of the frozen encoder plus a posterior
sample on a batch of 32, and 30 whole train steps of configs/mnist_latent.py,
and prints both and their ratio: the share of the step that caching the
latents once would save at most.
"""

import time

import jax

from ddpm_jax import config as config_lib, data as data_lib, latent, sharding
from ddpm_jax.train import step as step_lib


def main() -> None:
  c = config_lib.load_config_file('configs/mnist_latent.py')
  mesh = sharding.make_mesh()
  c, ae = latent.attach_autoencoder(c, mesh)
  to_latent = step_lib.latent_encoder(c)
  src = data_lib.load_source(c.data)
  b = data_lib.Batches(src, 32, 0, 0, 1)
  f = jax.jit(lambda p, im, k: to_latent(p, data_lib.preprocess(im, 32, False, None, 'pad'), k))
  x = b.batch(0)['image']
  jax.block_until_ready(f(ae, x, jax.random.key(0)))
  t = time.perf_counter()
  for i in range(30):
    z = f(ae, b.batch(i)['image'], jax.random.key(i))
  jax.block_until_ready(z)
  enc = (time.perf_counter() - t) / 30
  setup, state = step_lib.init_train_state(c, ae)
  state = sharding.replicate(state, mesh)
  stepf = step_lib.make_train_step(setup, mesh)
  state, m = stepf(state, sharding.shard_batch(b.batch(0), mesh)); jax.block_until_ready(m)
  t = time.perf_counter()
  for i in range(1, 31):
    state, m = stepf(state, sharding.shard_batch(b.batch(i), mesh))
  jax.block_until_ready(m)
  st = (time.perf_counter() - t) / 30
  print(f'encoder+posterior sample per batch of 32: {1000*enc:.1f} ms; whole latent train step: {1000*st:.1f} ms; share {enc/st:.0%}')


if __name__ == '__main__':
  main()
