"""Evaluates a trained workdir: samples, metrics, and a JSON report.

The report (printed and written to <workdir>/eval_<step>.json) holds:
- the FD between generated samples and the 1,000 held-out real images, in the
  features of a LeNet trained on the rest of MNIST-5k (shipped with the package);
- the real-vs-real floor (one held-out half against the other);
- the share of confident predictions (max p > 0.9);
- the entropy of the predicted-class histogram (mode coverage; max log2 10);
- for class-conditional models (labels cycle 0-9, guidance_scale w, by
  default the config's sampling.guidance_scale): the share of samples the
  classifier puts in the requested class; for text models the same share
  for prompts from the held-out templates (captions.HELD_OUT) naming the
  classes 0-9 in turn, in `language` (the prompt accuracy);
- with bpd_images N, the variational bound in bits/dim on N held-out images
  (the paper's discretised decoder; T network calls per batch);
- with inception_weights (pytorch-fid's FID Inception, see
  metrics/inception.py), the FID against the training split's statistics,
  cached in ref_stats. Any dataset; the LeNet FD is then skipped for
  non-MNIST models. Numbers comparable with the paper's CIFAR-10 FID 3.17 need
  num=50000: the FID of fewer samples is biased upwards.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import captions
from ddpm_jax import checks
from ddpm_jax import config as config_lib
from ddpm_jax import data as data_lib
from ddpm_jax import options
from ddpm_jax.data import to_uint8
from ddpm_jax.errors import UserError
from ddpm_jax import files
from ddpm_jax.files import atomic_write, probe_writable
from ddpm_jax.metrics import inception, likelihood, mnist_lenet
from ddpm_jax.metrics.fid import feature_stats, frechet_distance
from ddpm_jax.pipeline import open_pipeline, read_config


def _mnist_like(d) -> bool:
  """MNIST at any size (a latent model's 32×32 is taken back to 28×28)."""
  return d.channels == 1 and d.name in ('mnist5k', 'mnist') and d.image_size >= 28


def to_28(x_BHWC: np.ndarray, resize: str = 'bilinear') -> np.ndarray:
  """Images back at the LeNet's 28×28: the centre crop of padded ones, or
  resized (bilinear, antialiased)."""
  B, H, W, C = x_BHWC.shape
  if (H, W) == (28, 28):
    return x_BHWC
  if resize == 'pad':
    top, left = (H - 28) // 2, (W - 28) // 2
    return x_BHWC[:, top:top + 28, left:left + 28]
  return np.asarray(jax.image.resize(jnp.asarray(x_BHWC), (B, 28, 28, C), 'bilinear'))


def evaluate_autoencoder(workdir: str, step: int, batch: int = 250
                         ) -> tuple[dict, str]:
  """An MNIST autoencoder's held-out reconstructions: PSNR (at its own size,
  posterior mean decoded, range [-1, 1]) and the rFD, the LeNet FD of the
  reconstructions (taken to 28×28) against the real held-out images, beside
  the FD of the resize round trip alone (28 -> its size -> 28)."""
  from ddpm_jax import latent, sharding
  config, params, scale, step = latent.restore_autoencoder(
      workdir, step, sharding.make_mesh())
  if not _mnist_like(config.data):
    raise UserError('the autoencoder report uses the held-out MNIST images; '
                    'this autoencoder is not MNIST-like')
  fns = latent.autoencoder_fns(config.autoencoder, 1)
  model, held, _ = mnist_lenet.mnist_classifier(files.join(workdir, 'eval'))
  size, resize = config.data.image_size, config.data.resize
  x = np.asarray(data_lib.preprocess(jnp.asarray(held), size, False, None, resize))
  rec_fn = jax.jit(fns.reconstruct)
  t0 = time.time()
  rec = np.concatenate([np.asarray(rec_fn(params, x[i:i + batch]))
                        for i in range(0, len(x), batch)])
  seconds = time.time() - t0
  mse = np.mean((rec - x) ** 2, axis=(1, 2, 3))
  psnr = float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-12))))
  f_real, _ = mnist_lenet.classify(model, held)
  f_rec, _ = mnist_lenet.classify(model, to_28(rec, resize))
  f_round, _ = mnist_lenet.classify(model, to_28(x, resize))
  stats = feature_stats
  result = {
      'psnr_db': psnr, 'num_images': int(len(held)),
      'rfd': frechet_distance(*stats(f_rec), *stats(f_real)),
      'fd_resize_round_trip': frechet_distance(*stats(f_round), *stats(f_real)),
      'latent_scale': scale, 'reconstruct_seconds': round(seconds, 1),
      'step': step}
  path = files.join(workdir, f'eval_{step}.json')
  atomic_write(path, lambda f: f.write(json.dumps(result, indent=1).encode()))
  return result, path


def evaluate(workdir: str, *, num: int = 1000, seed: int = 0,
             sampler: str | None = None, num_steps: int | None = None,
             batch: int | None = None, checkpoint: int | None = None,
             guidance_scale: float | None = None,
             inception_weights: str | None = None, ref_stats: str | None = None,
             ref_images: int | None = None, bpd_images: int = 0,
             language: str = 'en', progress: bool = True) -> tuple[dict, str]:
  """Returns (the report, the path it was written to)."""
  workdir = checks.path('workdir', workdir)
  num = checks.integer('num', num, low=2)
  seed = checks.integer('seed', seed)
  bpd_images = checks.integer('bpd_images', bpd_images, low=0)
  checkpoint = checks.integer('checkpoint', checkpoint, low=0, optional=True)
  language = checks.choice('language', language, options.LANGUAGES)
  step, config = read_config(workdir, checkpoint)
  if config_lib.model_kind(config).autoencoder:
    return evaluate_autoencoder(workdir, step)
  pipe = open_pipeline(workdir, step)
  d = pipe.config.data
  mnist_like = _mnist_like(d)
  if not mnist_like and not inception_weights:
    raise UserError('the offline FD works on 28x28 MNIST-like models; this one '
                    f'makes {d.image_size}x{d.image_size}x{d.channels}: give '
                    'inception_weights for the Inception FID')
  if bpd_images and pipe.kind.latent:
    raise UserError('bpd_images needs a pixel model: a latent model has no '
                    'discrete pixel likelihood')
  if bpd_images and not mnist_like:
    raise UserError('bpd_images uses the held-out MNIST images; this model '
                    'is not MNIST-like')
  labels = list(np.arange(num) % pipe.num_classes) if pipe.num_classes else None
  prompts = None
  if pipe.kind.text:
    if d.captions not in captions.CAPTION_SETS:
      raise UserError('the prompt accuracy uses held-out captions of the '
                      f'digits or fashion classes; this model learned '
                      f"data.captions={d.captions!r}")
    prompts, _ = captions.held_out_prompts(d.captions, language, num)
  conditional = pipe.kind.conditional
  if conditional and guidance_scale is None:
    guidance_scale = pipe.config.sampling.guidance_scale  # for the report
  req = pipe.request(num, seed, sampler=sampler, num_steps=num_steps,
                     labels=labels, prompt=prompts,
                     guidance_scale=guidance_scale, batch_size=batch)
  eval_dir = files.join(workdir, 'eval')
  if inception_weights:  # fail on a bad file before sampling for an hour
    net = inception.load_fid_inception(inception_weights)
    features = inception.make_feature_fn(net)
    stats_path = ref_stats or files.join(
        eval_dir, f'fid_stats_{d.name.replace("/", "_")}_{d.image_size}.npz')
    stats_dir = os.path.dirname(files.absolute(stats_path))
    try:
      files.makedirs(stats_dir)
    except OSError as e:
      raise UserError(f'cannot create {stats_dir} for the FID statistics: '
                      f'{e.strerror}') from e
    if not files.exists(stats_path):
      try:
        probe_writable(stats_dir)
      except OSError as e:
        raise UserError(f'{stats_dir} is not writable ({e.strerror or e}): cannot '
                        'save the FID statistics there') from e
    ref_mu, ref_sigma = inception.reference_stats(d, features, stats_path, ref_images)
  if mnist_like:
    model, held, _ = mnist_lenet.mnist_classifier(eval_dir)
  pipe.restore(workdir)
  t0 = time.time()
  samples, _ = pipe.run(req, progress=progress)
  sampling_seconds = round(time.time() - t0, 1)
  if mnist_like:
    samples = to_28(samples, d.resize)
  result = mnist_lenet.mnist_metrics(model, samples, held) if mnist_like else {}
  if inception_weights:
    q = to_uint8(samples)  # as saved to PNG
    mu, sigma, n = inception.streaming_stats(
        (q[i:i + 200] for i in range(0, len(q), 200)), features)
    result.update(fid=frechet_distance(mu, sigma, ref_mu, ref_sigma),
                  fid_num_samples=n, fid_reference=stats_path)
    if n < 50000:
      print(f"note: FID from {n} samples is biased upwards; the paper's 3.17 "
            'used 50,000')
  if conditional and mnist_like:
    _, probs = mnist_lenet.classify(model, samples)
    requested = np.arange(len(samples)) % 10
    result['requested_class_accuracy'] = float((probs.argmax(1) == requested).mean())
    result['guidance_scale'] = guidance_scale
    if prompts is not None:
      result.update(prompt_language=language, prompt_templates='held_out')
  if bpd_images:
    t1 = time.time()
    result.update(likelihood.bits_per_dim(pipe.apply, pipe.params, pipe.config,
                                          held[:bpd_images]))
    result['bpd_seconds'] = round(time.time() - t1, 1)
  result.update(step=pipe.step, sampler=sampler or pipe.config.sampling.sampler,
                steps=dict(req.fn_args)['num_steps'],
                sampling_seconds=sampling_seconds)
  path = files.join(workdir, f'eval_{pipe.step}.json')
  atomic_write(path, lambda f: f.write(json.dumps(result, indent=1).encode()))
  return result, path
