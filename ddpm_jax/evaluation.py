"""Sample quality: Fréchet distance and an offline MNIST feature extractor.

The FD is computed in float64 with a symmetric, stable matrix square root.
On MNIST, features are the penultimate layer of a small LeNet-like
classifier trained on the embedded MNIST-5k with a held-out part (100 images
per class) left out. The held-out images are the reference set, and their two
halves give the real-vs-real floor.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ddpm_jax import data as data_lib
from ddpm_jax.files import atomic_write
from ddpm_jax.xla_options import compiler_options


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  f = np.asarray(features, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½, in float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  r1 = _sqrtm_psd(s1)
  m = r1 @ s2 @ r1
  tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


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


def held_out_split(labels: np.ndarray, per_class: int = 100):
  """Indices (train, held_out): the first `per_class` images of each class."""
  held = np.concatenate([np.flatnonzero(labels == c)[:per_class]
                         for c in range(10)])
  train = np.setdiff1d(np.arange(len(labels)), held)
  return train, held


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
  with np.load(path) as f:
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


def mnist_classifier(cache_dir: str | None = None, steps: int = 600
                     ) -> tuple[LeNet, np.ndarray, np.ndarray]:
  """(classifier, held-out images [-1, 1], held-out labels); the classifier
  is trained once and cached as `<cache_dir>/mnist_lenet.npz`."""
  src = data_lib.load_embedded_mnist()
  train_idx, held_idx = held_out_split(src.labels)
  held = np.asarray(data_lib.preprocess(jnp.asarray(src.images[held_idx]), 28,
                                        False, None))
  path = os.path.join(cache_dir, 'mnist_lenet.npz') if cache_dir else None
  if path and os.path.exists(path):
    model = load_classifier(path)
  else:
    model = train_classifier(src.images[train_idx], src.labels[train_idx], steps)
    if path:
      os.makedirs(cache_dir, exist_ok=True)
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
  f_real, _ = classify(model, held)
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
      'class_entropy_bits': float(-(nz * np.log2(nz)).sum()),
      'class_entropy_max_bits': float(np.log2(10)),
      'class_histogram': hist.round(4).tolist(),
      'num_samples': int(len(samples)), 'num_reference': int(len(held)),
  }


def bits_per_dim(pipe, x0_BHWC: np.ndarray, batch: int = 64, seed: int = 0) -> dict:
  """The negative ELBO in bits/dim of images in [-1, 1] (Ho et al., eq. 5),
  with the model's sampling variance (config.sampling.var_type)."""
  from ddpm_jax import diffusion
  var_type = pipe.config.sampling.var_type
  cond = pipe.num_classes

  @functools.partial(jax.jit, compiler_options=compiler_options())
  def terms_fn(params, x0, key):
    y = jnp.full(x0.shape[:1], cond, jnp.int32) if cond else None
    eps_fn = lambda x, t: pipe.setup.apply(params, x, t, y)
    return diffusion.vlb_terms_bpd(eps_fn, pipe.setup.schedule, x0, key, var_type)
  terms, priors = [], []
  for i in range(0, len(x0_BHWC), batch):
    t, p = terms_fn(pipe.params, jnp.asarray(x0_BHWC[i:i + batch]),
                    jax.random.fold_in(jax.random.key(seed), i))
    terms.append(np.asarray(t))
    priors.append(np.asarray(p))
  terms, priors = np.concatenate(terms, 1), np.concatenate(priors)
  total = terms.sum(0) + priors
  return {'bpd': float(total.mean()), 'bpd_stderr': float(total.std() / np.sqrt(len(total))),
          'bpd_decoder_L0': float(terms[0].mean()), 'bpd_prior_LT': float(priors.mean()),
          'bpd_images': int(len(total)), 'bpd_var_type': var_type}
