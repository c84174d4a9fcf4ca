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

from absl import logging
import jax

# Environment variables giving a cluster job's number of processes (a
# comma-separated host list for TPU pods).
_CLUSTER_SIZE_ENV = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')
_TPU_HOSTS_ENV = 'TPU_WORKER_HOSTNAMES'


def cluster_size(environ=None) -> int:
  """How many processes the cluster environment says the job has (1 if
  none): SLURM, Open MPI or a multi-host TPU slice."""
  environ = os.environ if environ is None else environ
  for key in _CLUSTER_SIZE_ENV:
    if environ.get(key, '').isdigit():
      return int(environ[key])
  hosts = environ.get(_TPU_HOSTS_ENV, '')
  return len(hosts.split(',')) if hosts else 1


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
    auto: if no address is given and the environment describes a job of
      several processes (SLURM, Open MPI, multi-host TPU), let JAX read
      the coordinator and process index from it.

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
  if auto and cluster_size() > 1:
    _use_gloo_on_cpu()
    jax.distributed.initialize()
    return jax.process_count() > 1
  return False


def _use_gloo_on_cpu() -> None:
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except (AttributeError, ValueError):  # Older/newer JAX without the option.
    pass


def say(text: str) -> None:
  """Prints `text` on process 0; the other processes log it."""
  if jax.process_index() == 0:
    print(text, flush=True)
  else:
    logging.info(text)
