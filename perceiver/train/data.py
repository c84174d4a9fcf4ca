"""A resumable, per-process iterator over in-memory arrays.

Shapes: B global batch, P processes, B/P rows read by one process.

Each epoch visits the examples in a permutation drawn from (seed, epoch); the
global batch t of an epoch is rows [t*B, (t+1)*B) of it, and process p reads
only its slice [p*B/P, (p+1)*B/P) of those rows (in the order
`jax.make_array_from_process_local_data` expects). The position (epoch, batch
within the epoch) is a small JSON dict saved with each checkpoint, so a
restarted run reads exactly the batches the uninterrupted run would have read.
Incomplete final batches of an epoch are dropped.
"""

from typing import Callable, Dict, Optional

import numpy as np

Batch = Dict[str, np.ndarray]


class ShardedArrayIterator:
  """Infinite shuffled batches of `arrays`, this process's rows only."""

  def __init__(
    self,
    arrays: Batch,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    transform: Optional[Callable[[Batch, np.random.Generator], Batch]] = None,
  ):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f'arrays: expected equal leading sizes, got {sizes}.')
    self._n = next(iter(sizes.values()))
    if global_batch % process_count:
      raise ValueError(
        f'batch_size={global_batch} must be divisible by the number of '
        f'processes={process_count}.'
      )
    if global_batch > self._n:
      raise ValueError(
        f'batch_size: expected at most the dataset size '
        f'{self._n}, got {global_batch}.'
      )
    self._arrays = arrays
    self._batch = global_batch
    self._seed = seed
    self._proc = process_index
    self._procs = process_count
    self._shuffle = shuffle
    self._transform = transform
    self.epoch = 0
    self.index = 0  # batch index within the epoch
    self._perm_epoch = None
    self._perm = None

  @property
  def batches_per_epoch(self) -> int:
    return self._n // self._batch

  def get_state(self) -> dict:
    return {'epoch': self.epoch, 'index': self.index}

  def set_state(self, position: dict) -> None:
    self.epoch = int(position['epoch'])
    self.index = int(position['index'])

  def _permutation(self) -> np.ndarray:
    if self._perm_epoch != self.epoch:
      if self._shuffle:
        rng = np.random.default_rng([self._seed, self.epoch])
        self._perm = rng.permutation(self._n)
      else:
        self._perm = np.arange(self._n)
      self._perm_epoch = self.epoch
    return self._perm

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    perm = self._permutation()
    local = self._batch // self._procs
    start = self.index * self._batch + self._proc * local
    rows = perm[start : start + local]
    batch = {k: v[rows] for k, v in self._arrays.items()}
    if self._transform is not None:
      # Randomness of the transform depends on (seed, epoch, batch, process):
      # reproducible after a restart.
      rng = np.random.default_rng(
        [self._seed, self.epoch, self.index, self._proc, 1]
      )
      batch = self._transform(batch, rng)
    self.index += 1
    if self.index >= self.batches_per_epoch:
      self.epoch += 1
      self.index = 0
    return batch


def eval_batches(
  arrays: Batch,
  *,
  global_batch: int,
  process_index: int = 0,
  process_count: int = 1,
):
  """One pass over `arrays` in order, padded to whole batches.

  Yields this process's rows of each global batch, with a 'mask' entry that
  is 1 for real examples and 0 for the padding of the last batch.
  """
  n = len(next(iter(arrays.values())))
  local = global_batch // process_count
  for start in range(0, n, global_batch):
    idx = np.arange(
      start + process_index * local, start + (process_index + 1) * local
    )
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    batch = {k: v[idx] for k, v in arrays.items()}
    batch['mask'] = mask
    yield batch
