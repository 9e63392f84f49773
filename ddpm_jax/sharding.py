"""The ('data',) mesh and moving arrays onto it, on one host or many.

The train step and the sampling scan are `jax.jit` over a mesh of every
device of every process: state replicated, batch sharded on its leading axis.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), ('data',))


def to_global(x, sharding: NamedSharding) -> jax.Array:
  """A host value (the same on every process) as a global array; works when
  the mesh spans devices of other processes, where device_put cannot."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = to_global(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(tree, mesh: Mesh):
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: to_global(x, sharding), tree)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the global batch → one global sharded array."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def gather(x) -> np.ndarray:
  """A batch-sharded global array as one host array on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
