"""The offline MNIST feature extractor and sample-quality metrics.

Features are the penultimate layer of a small LeNet-like
classifier trained on the embedded MNIST-5k with a held-out part (100 images
per class) left out; its weights ship with the package (`SHIPPED`). The
held-out images are the reference set, and their two halves give the
real-vs-real floor.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ddpm_jax import data as data_lib
from ddpm_jax import files
from ddpm_jax.files import atomic_write
from ddpm_jax.metrics.fid import feature_stats, frechet_distance

# The judge of every MNIST-like evaluation: `train_classifier` at 600 steps
# (seed 0), trained once on a 2-core Intel Xeon (2026-11-21) and shipped, so
# that every machine scores samples with the same weights (a retrained one
# differs in the last bits with the thread count, and so does its FD).
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'data_files', 'mnist_lenet.npz')


class LeNet(nnx.Module):
  """conv5-16 → pool → conv5-32 → pool → dense 128 (features) → dense 10."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, (5, 5), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (5, 5), rngs=rngs)
    self.fc1 = nnx.Linear(7 * 7 * 32, 128, rngs=rngs)
    self.fc2 = nnx.Linear(128, 10, rngs=rngs)

  def features(self, x_BHWC):
    pool = lambda h: nnx.avg_pool(h, (2, 2), (2, 2))
    h = pool(nnx.relu(self.conv1(x_BHWC)))
    h = pool(nnx.relu(self.conv2(h)))
    return nnx.relu(self.fc1(h.reshape(h.shape[0], -1)))

  def __call__(self, x_BHWC):
    return self.fc2(self.features(x_BHWC))



def train_classifier(images_BHWC: np.ndarray, labels: np.ndarray,
                     steps: int = 600, seed: int = 0) -> LeNet:
  model = LeNet(rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  batches = data_lib.Batches(data_lib.ArraySource(images_BHWC, labels), 128, seed)
  for i in range(steps):
    b = batches.batch(i)
    x = np.asarray(data_lib.preprocess(jnp.asarray(b['image']), 28, False, None))
    params, opt, _ = step(params, opt, x, b['label'])
  return nnx.merge(graphdef, params)


def save_classifier(model: LeNet, path: str) -> None:
  flat = {'/'.join(map(str, k)): np.asarray(v) for k, v in
          nnx.to_flat_state(nnx.state(model, nnx.Param))}
  atomic_write(path, lambda f: np.savez(
      f, **{k.replace('/value', ''): v for k, v in flat.items()}))


def load_classifier(path: str) -> LeNet:
  model = LeNet(rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  with np.load(files.open_read(path)) as f:
    pure = nnx.to_pure_dict(state)
    def fill(d, prefix=()):
      for k, v in d.items():
        if isinstance(v, dict):
          fill(v, prefix + (k,))
        else:
          d[k] = jnp.asarray(f['/'.join(map(str, prefix + (k,)))])
    fill(pure)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model


def mnist_classifier(cache_dir: str | None = None, steps: int | None = None
                     ) -> tuple[LeNet, np.ndarray, np.ndarray]:
  """(classifier, held-out images [-1, 1], held-out labels).

  steps=None: the shipped classifier (`SHIPPED`), unless `cache_dir` holds
  one a workdir trained earlier (`<cache_dir>/mnist_lenet.npz`, kept so that
  its old figures stay reproducible). A number of steps trains a new one
  and caches it there."""
  src = data_lib.load_embedded_mnist()
  train_idx, held_idx = data_lib.held_out_split(src.labels)
  held = np.asarray(data_lib.preprocess(jnp.asarray(src.images[held_idx]), 28,
                                        False, None))
  path = files.join(cache_dir, 'mnist_lenet.npz') if cache_dir else None
  if steps is None:
    model = load_classifier(path if path and files.exists(path) else SHIPPED)
  else:
    model = train_classifier(src.images[train_idx], src.labels[train_idx], steps)
    if path:
      files.makedirs(cache_dir)
      save_classifier(model, path)
  return model, held, src.labels[held_idx]


def classify(model: LeNet, x_BHWC: np.ndarray, batch: int = 500
             ) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, 128], class probabilities [N, 10])."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def f(p, x):
    m = nnx.merge(graphdef, p)
    feats = m.features(x)
    return feats, jax.nn.softmax(m.fc2(feats))
  outs = [f(params, jnp.asarray(x_BHWC[i:i + batch], jnp.float32))
          for i in range(0, len(x_BHWC), batch)]
  return (np.concatenate([np.asarray(o[0]) for o in outs]),
          np.concatenate([np.asarray(o[1]) for o in outs]))


def mnist_metrics(model: LeNet, samples: np.ndarray, held: np.ndarray,
                  confident: float = 0.9) -> dict:
  """FD to the held-out set, confident share, class-histogram entropy."""
  f_gen, p_gen = classify(model, samples)
  f_real, p_real = classify(model, held)
  half = len(held) // 2
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(held))
  a, b = f_real[perm[:half]], f_real[perm[half:]]
  hist = np.bincount(p_gen.argmax(1), minlength=10) / len(p_gen)
  nz = hist[hist > 0]
  return {
      'fd': frechet_distance(*feature_stats(f_gen), *feature_stats(f_real)),
      'fd_real_vs_real_floor': frechet_distance(*feature_stats(a), *feature_stats(b)),
      'confident_share': float((p_gen.max(1) > confident).mean()),
      'real_confident_share': float((p_real.max(1) > confident).mean()),
      'class_entropy_bits': float(-(nz * np.log2(nz)).sum()),
      'class_entropy_max_bits': float(np.log2(10)),
      'class_histogram': hist.round(4).tolist(),
      'num_samples': int(len(samples)), 'num_reference': int(len(held)),
  }
