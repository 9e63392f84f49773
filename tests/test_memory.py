"""memory.py and the pipeline's use of it: a sampling call that cannot fit is
refused before compiling, naming what fits; a default batch shrinks to fit;
an allocation failure is one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import untrained_pipeline
from ddpm_jax import memory
from ddpm_jax.errors import UserError


def _pipe(config):
  config.model.class_conditional = True
  return untrained_pipeline(config, lambda p: p)


def test_the_estimate_bounds_xla_and_grows_with_the_square_of_the_tokens(tiny_config):
  pipe = _pipe(tiny_config)
  x = np.zeros((8, 8, 1), np.float32)
  ratios = []
  for margin, batch in ((0, 4), (12, 2)):
    kw = dict(init_image=x, outpaint=(margin,) * 4) if margin else {}
    req = pipe.request(batch, 0, labels=[1], batch_size=batch, **kw)
    shape = dict(req.fn_args)['shape']
    fn = pipe._sample_fn(req.fn_args, req.batch)
    scale = None if req.scale is None else jnp.float32(req.scale)
    ma = fn.lower(pipe.params, jax.random.key(0), req.y, scale,
                  req.x_init, req.mask, req.y_null, req.noise).compile().memory_analysis()
    actual = ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
    fixed, per_image = pipe._call_bytes(shape, req.scale is not None)
    estimate = fixed + batch * per_image
    ratios.append(estimate / actual)
  # an upper bound, within a small factor (measured 1.0-2.1 on the MNIST model)
  assert all(0.9 < r < 4 for r in ratios), ratios
  lv = [memory.Level(1, 8, 1, heads=1)]
  small, big = memory.network_bytes(lv, 16, 16), memory.network_bytes(lv, 64, 64)
  assert big > 100 * small   # 16x the tokens: ~256x the attention logits


def test_too_large_is_one_line_before_compiling(tiny_config, monkeypatch):
  pipe = _pipe(tiny_config)
  monkeypatch.setattr(memory, 'device_bytes', lambda: 64 * 2 ** 20)   # 64 MiB
  x = np.zeros((8, 8, 1), np.float32)
  with pytest.raises(UserError, match=r'one 2008x2008 image needs about .* '
                     r'the largest square canvas that fits is about \d+x\d+'):
    pipe.request(1, 0, labels=[1], init_image=x, outpaint=(1000,) * 4)
  assert not pipe._cache   # nothing was built, let alone compiled
  monkeypatch.setattr(memory, 'device_bytes', lambda: 4 * 2 ** 20)
  with pytest.raises(UserError, match=r'a batch of 4096 images of 8x8 .* '
                     r'the largest batch that fits is about batch_size=\d+'):
    pipe.request(4096, 0, labels=[1], batch_size=4096)
  # no batch given: the default shrinks to what fits
  monkeypatch.setattr(memory, 'device_bytes', lambda: 2 ** 20)
  req = pipe.request(4096, 0, labels=[1])
  assert 1 <= req.batch < 256


def test_an_allocation_failure_is_one_line(tiny_config, monkeypatch):
  pipe = _pipe(tiny_config)
  req = pipe.request(2, 0)

  def exhausted(*args, **kwargs):
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 531293555328 bytes')
  monkeypatch.setattr(pipe, '_sample_fn', lambda *a: exhausted)
  with pytest.raises(UserError, match='out of device memory sampling a batch of 2'):
    pipe.run(req)

  def other(*args, **kwargs):
    raise jax.errors.JaxRuntimeError('INTERNAL: something else')
  monkeypatch.setattr(pipe, '_sample_fn', lambda *a: other)
  with pytest.raises(jax.errors.JaxRuntimeError):   # a library failure keeps its traceback
    pipe.run(req)
