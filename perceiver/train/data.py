"""The data layer: grain sources, per-record transforms, batches per process.

Shapes: B global batch, P processes, b = B/P rows read by one process,
W loader worker processes (0: read in the training process).

An experiment hands the engine a grain random-access source (`__len__`,
`__getitem__(index) -> dict[str, np.ndarray]`, picklable) and per-record ops
wrapped in `Map` / `RandomMap` (usually through `train_iterator_from_config`
and `eval_batches_from_config`, which take the batch sizes, seed and loader
fields from its config). `train_iterator` and `eval_batches` build a
`grain.DataLoader` from grain's own pieces: an `IndexSampler` (seed, shuffle,
epochs, reshuffled every epoch), `ShardOptions` for this JAX process, the
ops, `Batch`, and `worker_count` worker processes each keeping `prefetch`
batches ready.

Topology independence. The sampler defines one global stream of positions
s = 0, 1, 2, ... (epoch e covers [eN, (e+1)N) of an N-record source, in the
epoch's permutation); global batch t is the positions [tB, (t+1)B), and
process p's rows are the contiguous block [tB + pb, tB + (p+1)b) (the order
`jax.make_array_from_process_local_data` expects). A grain sampler hands
process p the indices p, p+P, p+2P, ... of its stream and each of W workers
batches every W-th of those; `_BlockSampler` (the one adapter) maps those
indices back onto the positions above, so that the global batches are the
same for any P and W. A `RandomMap` gets grain's per-position generator,
`Philox(seed + s)`; as the record at position s is the (s mod N)-th of epoch
s // N's permutation of `seed`, an op's randomness is a function of
(seed, epoch, record index) alone.

A batch that crosses the end of an epoch takes its first rows from one
epoch and the rest from the next (nothing is dropped or repeated within an
epoch). The iterator's state is grain's (JSON) plus the count of skipped
corrupt records; it goes into every checkpoint (see `checkpoint.py`).

Corrupt records. A record the source cannot read raises `CorruptRecordError`
naming its index; with `skip_corrupt=True` the next readable record (index
+1, +2, ... modulo N) takes its place, which keeps the batches independent of
the topology, and the iterator counts the skips (`skipped_records`). An op
that fails raises `CorruptRecordError` naming the op and the record index
(never skipped: an op's bug is not a bad record).
"""

import json
import math
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Union

from absl import flags
import grain
import numpy as np

Batch = Dict[str, np.ndarray]
Record = Dict[str, np.ndarray]

# Keys the engine adds to each record and removes from each batch.
_INDEX = '_record_index'  # which source record was read
_SKIPPED = '_skipped_records'  # how many unreadable records it replaced
_REAL = '_real'  # 1 for a real example, 0 for eval padding
_RESERVED = (_INDEX, _SKIPPED, _REAL)
# The padding mask of evaluation batches (float32 [b]: 1 for a real example, 0
# for padding), under a name of the engine's own: a task's batches may carry
# a 'mask' of their own (an attention mask) but never this key.
EVAL_MASK = '_eval_mask'


def check_batch_keys(batch: Any, where: str) -> None:
  """Raises ValueError if a task's batch uses the engine's `EVAL_MASK` key."""
  if isinstance(batch, dict) and EVAL_MASK in batch:
    raise ValueError(
      f'{where}: the key {EVAL_MASK!r} is reserved for the padding mask the '
      f"engine adds to evaluation batches; rename that entry of the task's "
      f'batches (keys {sorted(batch)}).'
    )


class CorruptRecordError(ValueError):
  """A record could not be read or transformed; names its index."""


def _split(record: Record):
  """(the experiment's entries, the engine's entries) of a record."""
  if not isinstance(record, dict):
    raise TypeError(
      f'record: expected a dict of numpy arrays, got {type(record).__name__}.'
    )
  own = {k: v for k, v in record.items() if k not in _RESERVED}
  engine = {k: record[k] for k in _RESERVED if k in record}
  return own, engine


def _name(fn: Callable) -> str:
  return getattr(fn, '__qualname__', None) or repr(fn)


class _Op:
  """What `Map` and `RandomMap` share: a function, its keywords, errors."""

  def __init__(self, fn: Callable, **kwargs):
    if not callable(fn):
      raise TypeError(f'fn: expected a callable, got {fn!r}.')
    self.fn = fn
    self.kwargs = kwargs

  def __repr__(self) -> str:
    args = ''.join(f', {k}={v!r}' for k, v in sorted(self.kwargs.items()))
    return f'{type(self).__name__}({_name(self.fn)}{args})'

  def _apply(self, record: Record, *rng) -> Record:
    own, engine = _split(record)
    try:
      out = self.fn(own, *rng, **self.kwargs)
    except Exception as e:
      raise CorruptRecordError(
        f'{self!r} failed on record {engine.get(_INDEX, "?")}: '
        f'{type(e).__name__}: {e}'
      ) from e
    if not isinstance(out, dict):
      raise TypeError(
        f'{self!r}: expected the op to return a dict, got {type(out).__name__}.'
      )
    return {**out, **engine}


class Map(_Op, grain.transforms.Map):
  """A grain MapTransform calling `fn(record, **kwargs) -> record`.

  `fn` must be deterministic and picklable (a module-level function or a
  `functools.partial` of one) when loader workers are used.
  """

  def map(self, element: Record) -> Record:
    return self._apply(element)


class RandomMap(_Op, grain.transforms.RandomMap):
  """A grain RandomMapTransform calling `fn(record, rng, **kwargs)`.

  `rng` is a `np.random.Generator` that depends on (seed, epoch, record
  index) only (see the module docstring); all of `fn`'s randomness must come
  from it.
  """

  def random_map(self, element: Record, rng: np.random.Generator) -> Record:
    return self._apply(element, rng)


Op = Union[Map, RandomMap]


class _Records:
  """The experiment's source as the loader reads it (a grain data source).

  Adds the record index (and, for evaluation, a padding flag for positions
  past the end) and handles unreadable records (see the module docstring).
  """

  def __init__(
    self, source, *, skip_corrupt: bool, length: Optional[int] = None
  ):
    self._source = source
    self._n = len(source)
    self._skip = skip_corrupt
    self._length = self._n if length is None else length

  def __len__(self) -> int:
    return self._length

  def __repr__(self) -> str:
    # Grain compares it with the one in a checkpoint; no object addresses.
    kind = type(self._source)
    own = kind.__repr__ is not object.__repr__
    inner = repr(self._source) if own else f'{kind.__module__}.{kind.__name__}'
    return f'Records({inner}, {self._n} records, skip_corrupt={self._skip})'

  def _read(self, index: int) -> Record:
    try:
      record = self._source[index]
    except Exception as e:
      raise CorruptRecordError(
        f'record {index} of {self!r} could not be read: {type(e).__name__}: {e}'
      ) from e
    own, _ = _split(record)
    return own

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    real = index < self._n
    first = index % self._n
    for skipped in range(self._n):
      at = (first + skipped) % self._n
      try:
        record = self._read(at)
      except CorruptRecordError:
        if not self._skip:
          raise
        continue
      record[_INDEX] = np.int64(at)
      record[_SKIPPED] = np.int64(skipped if real else 0)
      record[_REAL] = np.float32(real)
      return record
    raise CorruptRecordError(
      f'source: no record of {self!r} could be read (skip_corrupt=True).'
    )


class _BlockSampler:
  """Grain's `IndexSampler` with positions laid out per process and worker.

  The loader asks for index g = i*P + p (the i-th element of process p);
  worker w of W produces elements i = w + W*q and batches b of them, its
  k-th batch being the loader's batch n = k*W + w. That element is given the
  sampler's position s = n*B + p*b + j (j = q mod b): row j of process p's
  block of global batch n, whatever P and W.
  """

  def __init__(
    self,
    sampler: grain.samplers.IndexSampler,
    *,
    global_batch: int,
    process_count: int,
    worker_count: int,
  ):
    self._sampler = sampler
    self._batch = global_batch
    self._procs = process_count
    self._local = global_batch // process_count
    self._workers = max(worker_count, 1)

  def __len__(self) -> int:
    return len(self._sampler)

  def __repr__(self) -> str:
    return (
      f'BlockSampler({self._sampler!r}, global_batch={self._batch}, '
      f'process_count={self._procs}, worker_count={self._workers})'
    )

  def position(self, index: int) -> int:
    """The sampler position s of the loader's index g (see above)."""
    i, p = divmod(index, self._procs)
    q, w = divmod(i, self._workers)
    k, j = divmod(q, self._local)
    return (k * self._workers + w) * self._batch + p * self._local + j

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    return self._sampler[self.position(index)]


class BatchIterator:
  """This process's rows of each global batch, from a `grain.DataLoader`.

  Attributes:
    skipped_records: unreadable records replaced so far by this process
      (`skip_corrupt=True`), over the whole run (it is checkpointed).
    last_indices: int64 [b], the source indices of the last batch's rows.
  """

  def __init__(self, loader: grain.DataLoader, *, eval_mask: bool = False):
    self._loader = loader
    self._it = iter(loader)
    self._eval = eval_mask
    self.skipped_records = 0
    self.last_indices = None

  def __iter__(self) -> 'BatchIterator':
    return self

  def __next__(self) -> Batch:
    batch = dict(next(self._it))
    check_batch_keys(batch, 'source')
    self.last_indices = batch.pop(_INDEX)
    self.skipped_records += int(batch.pop(_SKIPPED).sum())
    real = batch.pop(_REAL)
    if self._eval:
      batch[EVAL_MASK] = real.astype(np.float32)
    return batch

  def get_state(self) -> bytes:
    """Grain's iterator state and the skip count, as JSON bytes."""
    return json.dumps(
      {
        'grain': json.loads(self._it.get_state()),
        'skipped_records': self.skipped_records,
      },
      indent=1,
    ).encode()

  def set_state(self, state: bytes) -> None:
    """Continues from a `get_state()` (same source, topology and workers)."""
    state = json.loads(state)
    self._it.set_state(json.dumps(state['grain']).encode())
    self.skipped_records = int(state['skipped_records'])

  def start_prefetch(self) -> None:
    """Starts the workers (grain's checkpoint restore calls it)."""
    self._it.start_prefetch()

  def close(self) -> None:
    """Stops the workers and frees their buffers; the iterator is done.

    Grain's iterator does that when it is deleted; this drops the only
    reference to it, before the interpreter exits.
    """
    self._it = None


def _check_count(name: str, value, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    what = 'a positive' if minimum else 'a non-negative'
    raise ValueError(f'{name}: expected {what} integer, got {value!r}.')


def _check_source_and_ops(source, ops: Sequence[Op]) -> int:
  for i, op in enumerate(ops):
    if not isinstance(op, (Map, RandomMap)):
      raise TypeError(
        f'ops[{i}]: expected a data.Map or data.RandomMap, got {op!r}.'
      )
  if not (hasattr(source, '__len__') and hasattr(source, '__getitem__')):
    raise TypeError(
      f'source: expected a random-access source (__len__ and '
      f'__getitem__), got {type(source).__name__}.'
    )
  n = len(source)
  if n == 0:
    raise ValueError(f'source: expected at least one record, got {source!r}.')
  return n


def _loader(
  records: _Records,
  sampler: _BlockSampler,
  ops: Sequence[Op],
  *,
  process_index: int,
  process_count: int,
  local_batch: int,
  worker_count: int,
  prefetch: int,
  read_options: Optional[grain.ReadOptions],
) -> grain.DataLoader:
  if not flags.FLAGS.is_parsed():
    # Grain reads its settings from absl flags, also in its worker threads;
    # outside an absl app (tests, notebooks) their defaults apply.
    flags.FLAGS.mark_as_parsed()
  return grain.DataLoader(
    data_source=records,
    sampler=sampler,
    operations=[*ops, grain.transforms.Batch(local_batch, drop_remainder=True)],
    worker_count=worker_count,
    worker_buffer_size=prefetch,
    shard_options=grain.sharding.ShardOptions(
      shard_index=process_index,
      shard_count=process_count,
      drop_remainder=True,
    ),
    read_options=read_options,
  )


def _check_topology(global_batch, process_index, process_count, worker_count):
  _check_count('global_batch', global_batch, 1)
  _check_count('process_count', process_count, 1)
  _check_count('worker_count', worker_count, 0)
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index: expected an integer in [0, {process_count}), got '
      f'{process_index!r}.'
    )
  if global_batch % process_count:
    raise ValueError(
      f'global_batch: expected a multiple of the process count '
      f'{process_count}, got {global_batch}.'
    )


def train_iterator(
  source,
  *,
  global_batch: int,
  seed: int,
  process_index: int,
  process_count: int,
  ops: Sequence[Op] = (),
  worker_count: int = 0,
  shuffle: bool = True,
  prefetch: int = 2,
  skip_corrupt: bool = False,
  read_options: Optional[grain.ReadOptions] = None,
) -> BatchIterator:
  """Infinite training batches: this process's rows of each global batch.

  Args:
    source: a grain random-access source of N records (dicts of numpy
      arrays, the same shapes and dtypes for every index).
    global_batch: B, examples per step over all processes.
    seed: shuffles every epoch and seeds the `RandomMap` ops; an integer in
      [0, 2**32).
    process_index: this JAX process, in [0, process_count).
    process_count: P; B must be a multiple of it.
    ops: per-record `Map` / `RandomMap` ops, applied in order.
    worker_count: W loader worker processes (0: read in this process).
    shuffle: visit each epoch in a fresh permutation (else in index order).
    prefetch: batches each worker keeps ready.
    skip_corrupt: replace unreadable records and count them (see the module
      docstring) instead of raising.
    read_options: grain's reader threads and buffer (default grain's).

  Returns:
    A `BatchIterator`: each `next()` is a dict of arrays [B/P, ...], the
    global batch t's rows [p*B/P, (p+1)*B/P); `get_state()` / `set_state()`
    save and restore its position (JSON bytes).

  Raises:
    ValueError: an empty source, B larger than N, B not a multiple of P,
      a seed outside [0, 2**32), a bad count.
    TypeError: a source without `__len__`/`__getitem__`, an op not wrapped
      in `Map` / `RandomMap`.
  """
  n = _check_source_and_ops(source, ops)
  _check_topology(global_batch, process_index, process_count, worker_count)
  _check_count('prefetch', prefetch, 0)
  if global_batch > n:
    raise ValueError(
      f'global_batch: expected at most the number of records in the source '
      f'({n} training examples), got {global_batch} (batch_size: a batch '
      f'larger than the training data).'
    )
  if not isinstance(seed, int) or not 0 <= seed < 2**32:
    raise ValueError(f'seed: expected an integer in [0, 2**32), got {seed!r}.')
  sampler = _BlockSampler(
    grain.samplers.IndexSampler(n, shuffle=shuffle, seed=seed),
    global_batch=global_batch,
    process_count=process_count,
    worker_count=worker_count,
  )
  return BatchIterator(
    _loader(
      _Records(source, skip_corrupt=skip_corrupt),
      sampler,
      ops,
      process_index=process_index,
      process_count=process_count,
      local_batch=global_batch // process_count,
      worker_count=worker_count,
      prefetch=prefetch,
      read_options=read_options,
    )
  )


def eval_batches(
  source,
  *,
  global_batch: int,
  process_index: int,
  process_count: int,
  ops: Sequence[Op] = (),
  worker_count: int = 0,
  prefetch: int = 2,
  read_options: Optional[grain.ReadOptions] = None,
) -> Iterator[Batch]:
  """One pass over `source` in index order, padded to whole batches.

  Args:
    source: as for `train_iterator`.
    global_batch: B.
    process_index: this JAX process, in [0, process_count).
    process_count: P; B must be a multiple of it.
    ops: deterministic per-record `Map` ops (a `RandomMap` gets a generator
      seeded from 0 and the position).
    worker_count: W loader worker processes.
    prefetch: batches each worker keeps ready.
    read_options: grain's reader threads and buffer.

  Returns:
    An iterator of this process's rows [B/P, ...] of each global batch,
    with a float32 `EVAL_MASK` entry [B/P]: 1 for a real example, 0 for the padding
    (repeats of real records) that completes the last batch. The number of
    batches is ceil(N / (B*max(W, 1))) * max(W, 1): with W workers, up to
    W-1 extra batches are all padding. Each record appears once with mask 1.

  Raises:
    ValueError / TypeError: as for `train_iterator`.
  """
  n = _check_source_and_ops(source, ops)
  _check_topology(global_batch, process_index, process_count, worker_count)
  _check_count('prefetch', prefetch, 0)
  block = global_batch * max(worker_count, 1)
  length = math.ceil(n / block) * block
  sampler = _BlockSampler(
    grain.samplers.IndexSampler(length, shuffle=False, num_epochs=1, seed=0),
    global_batch=global_batch,
    process_count=process_count,
    worker_count=worker_count,
  )
  loader = _loader(
    _Records(source, skip_corrupt=False, length=length),
    sampler,
    ops,
    process_index=process_index,
    process_count=process_count,
    local_batch=global_batch // process_count,
    worker_count=worker_count,
    prefetch=prefetch,
    read_options=read_options,
  )
  return BatchIterator(loader, eval_mask=True)


def train_iterator_from_config(
  source,
  config: Any,
  process_index: int,
  process_count: int,
  *,
  ops: Sequence[Op] = (),
  read_options: Optional[grain.ReadOptions] = None,
) -> BatchIterator:
  """`train_iterator` as an experiment's config sets it up.

  The global batch is `config.batch_size`, the seed `config.seed`, and the
  loader's fields of `config.data` (`worker_count`, `prefetch`,
  `skip_corrupt`; see `perceiver.train.config.base_config`) are passed on.
  """
  return train_iterator(
    source,
    global_batch=config.batch_size,
    seed=config.seed,
    skip_corrupt=config.data.skip_corrupt,
    **_loader_arguments(
      config, process_index, process_count, ops, read_options
    ),
  )


def eval_batches_from_config(
  source,
  config: Any,
  process_index: int,
  process_count: int,
  *,
  ops: Sequence[Op] = (),
  read_options: Optional[grain.ReadOptions] = None,
) -> Iterator[Batch]:
  """`eval_batches` as an experiment's config sets it up: the global batch
  is `config.eval_batch_size`, the loader's `config.data.worker_count` and
  `config.data.prefetch`."""
  return eval_batches(
    source,
    global_batch=config.eval_batch_size,
    **_loader_arguments(
      config, process_index, process_count, ops, read_options
    ),
  )


def _loader_arguments(
  config, process_index, process_count, ops, read_options
) -> Dict[str, Any]:
  """The keyword arguments `train_iterator` and `eval_batches` share."""
  return dict(
    process_index=process_index,
    process_count=process_count,
    ops=ops,
    worker_count=config.data.worker_count,
    prefetch=config.data.prefetch,
    read_options=read_options,
  )


class ArraySource:
  """A grain source over in-memory arrays: record i is {k: v[i]}.

  Args:
    arrays: name -> array [N, ...], the same N for every entry.

  Raises:
    ValueError: if the leading sizes differ.
  """

  def __init__(self, arrays: Dict[str, Any]):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f'arrays: expected equal leading sizes, got {sizes}.')
    self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self._n = next(iter(sizes.values()))

  def __len__(self) -> int:
    return self._n

  def __repr__(self) -> str:
    shapes = ', '.join(
      f'{k}: {v.dtype}{list(v.shape)}' for k, v in sorted(self._arrays.items())
    )
    return f'ArraySource({shapes})'

  def __getitem__(self, index: int) -> Record:
    return {k: v[index] for k, v in self._arrays.items()}
