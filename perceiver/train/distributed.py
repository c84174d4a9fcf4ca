"""Multi-host start-up: `jax.distributed.initialize` from flags or the cluster.

Three cases:
- explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`);
- a managed cluster (TPU pod, SLURM, ...): `jax.distributed.initialize()`
  with no arguments reads its environment (asked for with `auto=True`);
- neither: a single process, nothing to do.

On CPU the cross-process collectives use gloo.
"""

import os
from typing import Optional

import jax

_CLUSTER_ENV = ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'OMPI_COMM_WORLD_SIZE')


def initialize(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  auto: bool = False,
) -> bool:
  """Connects this process to the others; returns True if multi-process.

  Args:
    coordinator_address: 'host:port' of process 0's coordinator.
    num_processes: how many processes take part.
    process_id: this process's index in [0, num_processes).
    auto: if no address is given, let JAX detect a cluster from the
      environment (SLURM, TPU pods, Open MPI).

  Raises:
    ValueError: if only some of the three explicit settings are given, or
      they are inconsistent.
  """
  given = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in given) and not all(
    v is not None for v in given
  ):
    raise ValueError(
      'coordinator_address, num_processes and process_id: expected all '
      f'three or none, got coordinator_address={coordinator_address!r}, '
      f'num_processes={num_processes!r}, process_id={process_id!r}.'
    )
  if coordinator_address is not None:
    if num_processes < 1:
      raise ValueError(
        f'num_processes: expected a positive integer, got {num_processes}.'
      )
    if not 0 <= process_id < num_processes:
      raise ValueError(
        f'process_id: expected an integer in '
        f'[0, {num_processes}), got {process_id}.'
      )
    if num_processes == 1:
      return False
    _use_gloo_on_cpu()
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
    )
    return True
  if auto and any(k in os.environ for k in _CLUSTER_ENV):
    _use_gloo_on_cpu()
    jax.distributed.initialize()
    return jax.process_count() > 1
  return False


def _use_gloo_on_cpu() -> None:
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except (AttributeError, ValueError):  # Older/newer JAX without the option.
    pass
