"""The variational bound in bits/dim (Ho et al., 2020, eq. 5)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import builders
from ddpm_jax import diffusion
from ddpm_jax.xla_options import compiler_options


def bits_per_dim(apply: Callable, params: Any, config, x0_BHWC: np.ndarray,
                 batch: int = 64, seed: int = 0) -> dict:
  """The negative ELBO in bits/dim of images in [-1, 1], with the paper's
  discretised decoder for L_0 and the config's sampling variance
  (config.sampling.var_type). Class-conditional models get the null label,
  text models the empty prompt."""
  var_type = config.sampling.var_type
  schedule = builders.schedule_from_config(config)
  null = builders.null_condition(config, 1)

  @functools.partial(jax.jit, compiler_options=compiler_options())
  def terms_fn(params, x0, key):
    y = None if null is None else jnp.repeat(null, x0.shape[0], axis=0)
    eps_fn = lambda x, t: apply(params, x, t, y)
    return diffusion.vlb_terms_bpd(eps_fn, schedule, x0, key, var_type)
  terms, priors = [], []
  for i in range(0, len(x0_BHWC), batch):
    t, p = terms_fn(params, jnp.asarray(x0_BHWC[i:i + batch]),
                    jax.random.fold_in(jax.random.key(seed), i))
    terms.append(np.asarray(t))
    priors.append(np.asarray(p))
  terms, priors = np.concatenate(terms, 1), np.concatenate(priors)
  total = terms.sum(0) + priors
  return {'bpd': float(total.mean()), 'bpd_stderr': float(total.std() / np.sqrt(len(total))),
          'bpd_decoder_L0': float(terms[0].mean()), 'bpd_prior_LT': float(priors.mean()),
          'bpd_images': int(len(total)), 'bpd_var_type': var_type}
