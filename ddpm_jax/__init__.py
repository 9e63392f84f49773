"""ddpm_jax: Denoising Diffusion Probabilistic Models in JAX and Flax NNX.

    from ddpm_jax import load
    images = load('workdirs/mnist').sample(num=16, seed=0)
"""

__all__ = ['Pipeline', 'load']
__version__ = '0.1.0'


def __getattr__(name):  # lazy: `import ddpm_jax.schedules` stays light
  if name in __all__:
    from ddpm_jax import pipeline
    return getattr(pipeline, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
