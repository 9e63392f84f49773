"""Evaluates a trained workdir: samples, metrics, and a JSON report.

The report (printed and written to <workdir>/eval_<step>.json) holds:
- the FD between generated samples and the 1,000 held-out real images, in the
  features of a LeNet trained on the rest of MNIST-5k (cached in the workdir);
- the real-vs-real floor (one held-out half against the other);
- the share of confident predictions (max p > 0.9);
- the entropy of the predicted-class histogram (mode coverage; max log2 10);
- for class-conditional models (labels cycle 0-9, guidance_scale w, by
  default the config's sampling.guidance_scale): the share of samples the
  classifier puts in the requested class;
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

import numpy as np

from ddpm_jax.data import to_uint8
from ddpm_jax.errors import UserError
from ddpm_jax.files import atomic_write, probe_writable
from ddpm_jax.metrics import inception, likelihood, mnist_lenet
from ddpm_jax.metrics.fid import frechet_distance
from ddpm_jax.pipeline import open_pipeline


def evaluate(workdir: str, *, num: int = 1000, seed: int = 0,
             sampler: str | None = None, num_steps: int | None = None,
             batch: int | None = None, checkpoint: int | None = None,
             guidance_scale: float | None = None,
             inception_weights: str | None = None, ref_stats: str | None = None,
             ref_images: int | None = None, bpd_images: int = 0,
             progress: bool = True) -> tuple[dict, str]:
  """Returns (the report, the path it was written to)."""
  if num < 2:
    raise UserError(f'--num must be at least 2, got {num}')
  if bpd_images < 0:
    raise UserError(f'--bpd_images must be >= 0, got {bpd_images}')
  pipe = open_pipeline(workdir, checkpoint)
  d = pipe.config.data
  mnist_like = (d.image_size, d.channels) == (28, 1)
  if not mnist_like and not inception_weights:
    raise UserError('the offline FD works on 28x28 MNIST-like models; this one '
                    f'makes {d.image_size}x{d.image_size}x{d.channels}: pass '
                    '--inception_weights for the Inception FID')
  if bpd_images and not mnist_like:
    raise UserError('--bpd_images uses the held-out MNIST images; this model '
                    'is not MNIST-like')
  labels = list(np.arange(num) % pipe.num_classes) if pipe.num_classes else None
  if pipe.num_classes and guidance_scale is None:
    guidance_scale = pipe.config.sampling.guidance_scale
  req = pipe.request(num, seed, sampler=sampler, num_steps=num_steps,
                     labels=labels, guidance_scale=guidance_scale,
                     batch_size=batch)
  eval_dir = os.path.join(workdir, 'eval')
  if inception_weights:  # fail on a bad file before sampling for an hour
    net = inception.load_fid_inception(inception_weights)
    features = inception.make_feature_fn(net)
    stats_path = ref_stats or os.path.join(
        eval_dir, f'fid_stats_{d.name.replace("/", "_")}_{d.image_size}.npz')
    stats_dir = os.path.dirname(os.path.abspath(stats_path))
    try:
      os.makedirs(stats_dir, exist_ok=True)
    except OSError as e:
      raise UserError(f'cannot create {stats_dir} for the FID statistics: '
                      f'{e.strerror}') from e
    if not os.path.exists(stats_path):
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
  if pipe.num_classes and mnist_like:
    _, probs = mnist_lenet.classify(model, samples)
    requested = np.arange(len(samples)) % 10
    result['requested_class_accuracy'] = float((probs.argmax(1) == requested).mean())
    result['guidance_scale'] = guidance_scale
  if bpd_images:
    t1 = time.time()
    result.update(likelihood.bits_per_dim(pipe.apply, pipe.params, pipe.config,
                                          held[:bpd_images]))
    result['bpd_seconds'] = round(time.time() - t1, 1)
  result.update(step=pipe.step, sampler=sampler or pipe.config.sampling.sampler,
                steps=dict(req.fn_args)['num_steps'],
                sampling_seconds=sampling_seconds)
  path = os.path.join(workdir, f'eval_{pipe.step}.json')
  atomic_write(path, lambda f: f.write(json.dumps(result, indent=1).encode()))
  return result, path
