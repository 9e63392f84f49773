"""The offline MNIST LeNet: held-out split, cache, metrics."""

import numpy as np

from ddpm_jax.metrics import mnist_lenet


def test_held_out_split_and_classifier_metrics(tmp_path):
  model, held, labels = mnist_lenet.mnist_classifier(str(tmp_path), steps=150)
  assert held.shape == (1000, 28, 28, 1) and np.bincount(labels).tolist() == [100] * 10
  _, probs = mnist_lenet.classify(model, held)
  assert (probs.argmax(1) == labels).mean() > 0.9   # held-out accuracy (0.939 measured)
  again = mnist_lenet.load_classifier(str(tmp_path / 'mnist_lenet.npz'))
  np.testing.assert_allclose(mnist_lenet.classify(again, held[:10])[1], probs[:10], atol=1e-6)
  # the metrics, in the shipped classifier's features
  model, _, _ = mnist_lenet.mnist_classifier()
  real = mnist_lenet.mnist_metrics(model, held[::2], held)  # all ten classes
  noise = mnist_lenet.mnist_metrics(
      model, np.random.default_rng(0).uniform(-1, 1, (500, 28, 28, 1)).astype(np.float32), held)
  assert real['fd'] < noise['fd'] / 5
  assert real['class_entropy_bits'] > 3.2 and real['confident_share'] > 0.8
  # the held-out images' own share, for the ratio docs/results/quality.md reports
  assert real['real_confident_share'] == real['confident_share'] or abs(
      real['real_confident_share'] - real['confident_share']) < 0.05
  assert noise['confident_share'] < noise['real_confident_share']
  assert noise['class_entropy_bits'] < real['class_entropy_bits']


def test_the_shipped_classifier_is_loaded_and_accurate(tmp_path):
  model, held, labels = mnist_lenet.mnist_classifier(str(tmp_path))
  assert not (tmp_path / 'mnist_lenet.npz').exists()   # nothing trained
  assert (mnist_lenet.classify(model, held)[1].argmax(1) == labels).mean() > 0.95  # 0.963
  # a workdir's own classifier, cached by an older version, is kept
  trained, _, _ = mnist_lenet.mnist_classifier(str(tmp_path), steps=5)
  again, _, _ = mnist_lenet.mnist_classifier(str(tmp_path))
  np.testing.assert_array_equal(mnist_lenet.classify(again, held[:8])[1],
                                mnist_lenet.classify(trained, held[:8])[1])
