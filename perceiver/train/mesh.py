"""The device mesh and the shardings of a training run.

Shapes: B global batch, D devices = data x fsdp.

A run places every array with a `jax.sharding.NamedSharding` over a 2-D mesh
with axes ('data', 'fsdp'):

- the batch is split along its leading axis over *all* devices (both axes);
- parameters and optimizer state are either replicated (fsdp = 1, plain data
  parallelism) or, for models that do not fit one device, each large array is
  split along one of its dimensions over the 'fsdp' axis (ZeRO-3 style); XLA
  inserts the all-gathers and reduce-scatters.

This replaces the released code's `jax.pmap(..., axis_name='i')` + `psum`:
under `jax.jit` the global-batch mean already spans every device, so the
gradient is the global mean by construction and no collective is written by
hand.
"""

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = 'data'
FSDP = 'fsdp'
BATCH_AXES = (DATA, FSDP)


def make_mesh(
  fsdp: int = 1, devices: Optional[Sequence[jax.Device]] = None
) -> Mesh:
  """Builds the ('data', 'fsdp') mesh over every device of every process.

  Args:
    fsdp: size of the 'fsdp' axis; 1 means replicated parameters.
    devices: the devices to use (default: `jax.devices()`, i.e. all hosts).

  Returns:
    A `Mesh` of shape (num_devices // fsdp, fsdp).
  """
  devices = list(jax.devices() if devices is None else devices)
  if isinstance(fsdp, bool) or not isinstance(fsdp, int) or fsdp < 1:
    raise ValueError(f'mesh.fsdp: expected a positive integer, got {fsdp!r}.')
  if len(devices) % fsdp:
    raise ValueError(
      f'mesh.fsdp: expected a divisor of the device count {len(devices)}, '
      f'got {fsdp}.'
    )
  grid = np.asarray(devices, dtype=object).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, (DATA, FSDP))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int = 2**12) -> P:
  """The partition spec of one parameter under FSDP.

  The largest dimension divisible by `fsdp` is split; arrays smaller than
  `min_size` elements (biases, norms, scalars) stay replicated, since
  gathering them costs more than storing them.
  """
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for axis in order:
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = FSDP
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_tree: Any, shard_params: bool) -> Any:
  """Shardings for a pytree of arrays (train state): replicated or FSDP."""
  fsdp = mesh.shape[FSDP]

  def one(leaf):
    shape = getattr(leaf, 'shape', ())
    if not shard_params:
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(shape, fsdp))

  return jax.tree.map(one, abstract_tree)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Builds global arrays from this process's shard of the batch.

  Each process passes only the examples it read (its rows of the global
  batch, in process order); the result is one global `jax.Array` per leaf,
  split over every device of every process.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
    local_batch,
  )
