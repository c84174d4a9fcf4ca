"""Preemption: on SIGTERM, every process stops at one agreed step.

TPU pods, Kubernetes and SLURM send SIGTERM some time before they kill a job.
`Watcher.reached(step)` is called by the training loop after each step; it
becomes True at the same step on every process, and the loop then writes a
checkpoint at that step and raises `Preempted` (which `experiments.main`
turns into the exit status `PREEMPTED_EXIT_CODE`).

- Several processes (`jax.distributed` initialised): JAX's preemption
  service catches SIGTERM on whichever process gets it, tells the others
  through the distributed runtime, and `reached_preemption_sync_point`
  returns True on every process at the same step (the largest step any
  process had reached, plus one).
- One process: a Python SIGTERM handler sets a flag and the next step is
  the agreed one.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

# sysexits.h EX_TEMPFAIL: a temporary failure, the user is invited to retry.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """The job stopped on SIGTERM after checkpointing `step`."""

  def __init__(self, step: int, directory: str):
    self.step = step
    self.directory = directory
    super().__init__(
      f'Preempted (SIGTERM): stopped after step {step} and saved its '
      f'checkpoint in {directory}; run the same command again to continue '
      f'from step {step}.'
    )


class Watcher:
  """A context manager answering "is this the step to stop at?"."""

  def __init__(self):
    self._multi = jax.process_count() > 1
    self._flag = threading.Event()
    self._previous = None

  def __enter__(self) -> 'Watcher':
    # The multi-process case is handled by JAX's own SIGTERM notifier; a
    # Python handler would replace it. Signal handlers can only be set from
    # the main thread.
    if (
      not self._multi and threading.current_thread() is threading.main_thread()
    ):
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._flag.set()

  def reached(self, step: int) -> bool:
    """True at the step (the same on every process) to checkpoint and stop.

    Args:
      step: the number of the step just dispatched; must increase by one
        between calls on every process.
    """
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()
