"""ddpm_jax: Denoising Diffusion Probabilistic Models in JAX and Flax NNX."""

from ddpm_jax.pipeline import Pipeline, load

__all__ = ['Pipeline', 'load']
__version__ = '0.1.0'
