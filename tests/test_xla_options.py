"""The hot loops' XLA compile options: applied on CPU, opt-out, safe fallback."""

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import xla_options


def _fresh(monkeypatch, **env):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  xla_options.compiler_options.cache_clear()
  try:
    return xla_options.compiler_options()
  finally:
    xla_options.compiler_options.cache_clear()


def test_cpu_gets_options_that_compile_and_keep_results(monkeypatch):
  opts = _fresh(monkeypatch)
  assert jax.default_backend() == 'cpu' and opts == xla_options._CPU
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 4)), jnp.float32)
  k = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 4, 5)), jnp.float32)
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum((1, 2))
  np.testing.assert_allclose(jax.jit(conv, compiler_options=opts)(x, k),
                             jax.jit(conv)(x, k), rtol=1e-5, atol=1e-5)


def test_opt_out_and_unknown_option_fall_back_to_defaults(monkeypatch):
  assert _fresh(monkeypatch, **{xla_options.ENV_DEFAULTS: '1'}) is None
  monkeypatch.delenv(xla_options.ENV_DEFAULTS)
  monkeypatch.setattr(xla_options, '_CPU', {'xla_no_such_option_here': '1'})
  assert _fresh(monkeypatch) is None
