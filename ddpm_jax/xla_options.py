"""XLA compile options for the hot loops (the train step and the sampling scan).

On CPU, XLA (jaxlib 0.10) hands convolutions and dots to YNNPACK by default,
and those run this UNet's forward pass slower than XLA's own kernels
(`python -m benchmarks.bench` measures both side by side; see
docs/results/speed.md). The hot loops are therefore compiled with YNNPACK
kept for reductions only. Other backends get no options. Set
DDPM_JAX_XLA_DEFAULTS=1 to compile with XLA's defaults.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

ENV_DEFAULTS = 'DDPM_JAX_XLA_DEFAULTS'
_CPU = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}


@functools.cache
def compiler_options() -> dict[str, str] | None:
  """Options for `jax.jit(..., compiler_options=...)`; None where they do not
  apply (not CPU, opted out, or an XLA without the option)."""
  if os.environ.get(ENV_DEFAULTS) == '1' or jax.default_backend() != 'cpu':
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU).lower(jnp.float32(0)).compile()
  except Exception:  # this XLA does not know the option: keep its defaults
    return None
  return dict(_CPU)
