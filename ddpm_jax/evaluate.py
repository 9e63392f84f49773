"""Sample quality of a trained MNIST model, offline.

  python -m ddpm_jax.evaluate --workdir DIR --num 1000 [--sampler dpm++2m --steps 20]

Prints and writes <workdir>/eval_<step>.json:
- the FD between generated samples and the 1,000 held-out real images, in the
  features of a LeNet trained on the rest of MNIST-5k (cached in the workdir);
- the real-vs-real floor (one held-out half against the other);
- the share of confident predictions (max p > 0.9);
- the entropy of the predicted-class histogram (mode coverage; max log2 10);
- for class-conditional models (labels cycle 0-9, --guidance-scale w): the
  share of samples the classifier puts in the requested class;
- with --bpd_images N, the variational bound in bits/dim on N held-out images
  (the paper's discretised decoder; T network calls per batch);
- with --inception_weights FILE (pytorch-fid's FID Inception, see
  ddpm_jax/inception.py), the FID against the training split's statistics,
  cached in --ref_stats. Any dataset; the LeNet FD is then skipped for
  non-MNIST models. Numbers comparable with the paper's CIFAR-10 FID 3.17 need
  --num 50000: the FID of fewer samples is biased upwards.
"""

import json
import os
import time

from absl import flags

from ddpm_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir.', required=True)
_NUM = flags.DEFINE_integer('num', 1000, 'Number of generated samples.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_SAMPLER = flags.DEFINE_enum('sampler', None, ['ddpm', 'ddim', 'dpm++2m'], 'Sampler.')
_STEPS = flags.DEFINE_integer('steps', None, 'Sampling steps (default: all T).')
_BATCH = flags.DEFINE_integer('batch', 250, 'Images per sampling call.')
_CHECKPOINT = flags.DEFINE_integer('checkpoint', None, 'Step (default: latest).')
_GUIDANCE = flags.DEFINE_float('guidance-scale', None, 'Class-conditional models: '
                               'guidance weight (labels cycle 0-9).')
_INCEPTION = flags.DEFINE_string('inception_weights', None, 'FID Inception '
                                 'weights (.npz or .pth; see ddpm_jax/inception.py).')
_REF_STATS = flags.DEFINE_string('ref_stats', None, 'FID statistics (.npz mu, sigma) '
                                 'of the training split; computed and saved here if '
                                 'missing (default <workdir>/eval/fid_stats_<data>_<size>.npz).')
_REF_NUM = flags.DEFINE_integer('ref_images', None, 'Training images for new FID '
                                'statistics (default: the whole split).')
_BPD = flags.DEFINE_integer('bpd_images', 0, 'Held-out images for bits/dim (0: skip); '
                            'costs T network calls per batch.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  import numpy as np
  from ddpm_jax import evaluation, inception
  from ddpm_jax.data import to_uint8
  from ddpm_jax.errors import UserError
  from ddpm_jax.files import atomic_write
  from ddpm_jax.pipeline import load
  if _NUM.value < 2 or _BATCH.value <= 0:
    raise UserError('--num must be at least 2 and --batch positive')
  pipe = load(_WORKDIR.value, step=_CHECKPOINT.value)
  d = pipe.config.data
  mnist_like = (d.image_size, d.channels) == (28, 1)
  if not mnist_like and not _INCEPTION.value:
    raise UserError('the offline FD works on 28x28 MNIST-like models; this one '
                    f'makes {d.image_size}x{d.image_size}x{d.channels}: pass '
                    '--inception_weights for the Inception FID')
  if _BPD.value and not mnist_like:
    raise UserError('--bpd_images uses the held-out MNIST images; this model '
                    'is not MNIST-like')
  eval_dir = os.path.join(_WORKDIR.value, 'eval')
  if _INCEPTION.value:  # fail on a bad file before sampling for an hour
    net = inception.load_fid_inception(_INCEPTION.value)
    features = inception.make_feature_fn(net)
    stats_path = _REF_STATS.value or os.path.join(
        eval_dir, f'fid_stats_{d.name.replace("/", "_")}_{d.image_size}.npz')
    stats_dir = os.path.dirname(os.path.abspath(stats_path))
    try:
      os.makedirs(stats_dir, exist_ok=True)
    except OSError as e:
      raise UserError(f'cannot create {stats_dir} for the FID statistics: {e.strerror}') from None
    if not os.path.exists(stats_path) and not os.access(stats_dir, os.W_OK):
      raise UserError(f'{stats_dir} is not writable: cannot save the FID statistics there')
    ref_mu, ref_sigma = inception.reference_stats(d, features, stats_path, _REF_NUM.value)
  if mnist_like:
    model, held, _ = evaluation.mnist_classifier(eval_dir)
  t0 = time.time()
  parts, done = [], 0
  while done < _NUM.value:
    n = min(_BATCH.value, _NUM.value - done)
    labels = list(np.arange(done, done + n) % 10) if pipe.num_classes else None
    parts.append(pipe.sample(n, seed=_SEED.value * 100003 + done,
                             sampler=_SAMPLER.value, num_steps=_STEPS.value,
                             labels=labels, guidance_scale=_GUIDANCE.value))
    done += n
  samples = np.concatenate(parts)
  sampling_seconds = round(time.time() - t0, 1)
  result = evaluation.mnist_metrics(model, samples, held) if mnist_like else {}
  if _INCEPTION.value:
    q = to_uint8(samples)  # as saved to PNG
    mu, sigma, n = inception.streaming_stats(
        (q[i:i + 200] for i in range(0, len(q), 200)), features)
    result.update(fid=evaluation.frechet_distance(mu, sigma, ref_mu, ref_sigma),
                  fid_num_samples=n, fid_reference=stats_path)
    if n < 50000:
      print(f'note: FID from {n} samples is biased upwards; the paper\'s 3.17 '
            'used 50,000')
  if pipe.num_classes and mnist_like:
    _, probs = evaluation.classify(model, samples)
    requested = np.arange(len(samples)) % 10
    result['requested_class_accuracy'] = float((probs.argmax(1) == requested).mean())
    result['guidance_scale'] = _GUIDANCE.value
  if _BPD.value:
    t1 = time.time()
    result.update(evaluation.bits_per_dim(pipe, held[:_BPD.value]))
    result['bpd_seconds'] = round(time.time() - t1, 1)
  result.update(step=pipe.step, sampler=_SAMPLER.value or pipe.config.sampling.sampler,
                steps=_STEPS.value or pipe.config.diffusion.num_timesteps,
                sampling_seconds=sampling_seconds)
  path = os.path.join(_WORKDIR.value, f'eval_{pipe.step}.json')
  atomic_write(path, lambda f: f.write(json.dumps(result, indent=1).encode()))
  print(json.dumps(result))
  print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
