"""The data layer: grain sources, per-record transforms, batches per process.

Shapes: B global batch, P processes, b = B/P rows read by one process,
W loader worker processes (0: read in the training process).

An experiment hands the engine a grain random-access source (`__len__`,
`__getitem__(index) -> dict[str, np.ndarray]`, picklable) and per-record ops
wrapped in `Map` / `RandomMap` (usually through `train_iterator_from_config`
and `eval_batches_from_config`, which take the batch sizes, seed, number of
steps and loader fields from its config). `train_iterator` and
`eval_batches` build a `grain.DataLoader` from grain's own pieces: an
`IndexSampler` (seed, shuffle, epochs, reshuffled every epoch),
`ShardOptions` for this JAX process, the ops, `Batch`, and `worker_count`
worker processes each keeping `prefetch` batches ready.

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

Training progress. Global batch t is consumed by training step t (0-based:
the update that turns `TrainState.step` t into t+1), so the step of every
record is known when it is read: s // B. An op whose function has a
parameter named `progress` is called with `progress=Progress(step,
fraction)` (see `Progress`), on any topology and across resumes; evaluation
ops see the fixed `Progress(total_steps, 1.0)`, the end of training. To put
the progress into the batches, return it from such an op.

A batch that crosses the end of an epoch takes its first rows from one
epoch and the rest from the next (nothing is dropped or repeated within an
epoch).

Resuming, also on another topology. The iterator's state (`get_state()`,
JSON) is the number of global batches it has consumed (the training step),
the count of skipped corrupt records and what it reads (source, sampler,
B). As the batches depend on the position only, a state continues on any
P' processes and W' workers: `set_state` takes a state of the same process
(any W), `set_states` the states of all processes of a run with another
P (see `checkpoint.py`). States written before this format (grain's
iterator state) are read too.

Corrupt records. A record the source cannot read raises `CorruptRecordError`
naming its index; with `skip_corrupt=True` the next readable record (index
+1, +2, ... modulo N) takes its place, which keeps the batches independent of
the topology, and the iterator counts the skips (`skipped_records`). An op
that fails raises `CorruptRecordError` naming the op and the record index
(never skipped: an op's bug is not a bad record).
"""

import functools
import inspect
import json
import math
import re
from typing import (
  Any,
  Callable,
  Dict,
  Iterator,
  NamedTuple,
  Optional,
  Sequence,
  Union,
)

from absl import flags
import grain
import numpy as np

Batch = Dict[str, np.ndarray]
Record = Dict[str, np.ndarray]

# Keys the engine adds to each record and removes from each batch.
_INDEX = '_record_index'  # which source record was read
_SKIPPED = '_skipped_records'  # how many unreadable records it replaced
_REAL = '_real'  # 1 for a real example, 0 for eval padding
_STEP = '_step'  # the training step that consumes it (Progress.step)
_FRACTION = '_fraction'  # Progress.fraction
_RESERVED = (_INDEX, _SKIPPED, _REAL, _STEP, _FRACTION)
# The padding mask of evaluation batches (float32 [b]: 1 for a real example, 0
# for padding), under a name of the engine's own: a task's batches may carry
# a 'mask' of their own (an attention mask) but never this key.
EVAL_MASK = '_eval_mask'
# The keyword under which an op is given the training progress.
PROGRESS = 'progress'


class Progress(NamedTuple):
  """How far training is when a record is consumed (what ops may read).

  Attributes:
    step: int, the 0-based training step whose global batch holds the
      record (`TrainState.step` before that update): global batch t is
      consumed by step t, t in [0, total_steps) during the run (batches
      prefetched past the end have t >= total_steps). Evaluation records
      have step = total_steps.
    fraction: Python float in [0, 1], min(step / total_steps, 1): 0 at the
      first step, 1 at the end (and for evaluation). It follows the run's
      `total_steps`: a run resumed with another total_steps sees other
      fractions from then on.
  """

  step: int
  fraction: float


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


class ResumeError(ValueError):
  """A saved data position this iterator cannot continue from (another
  source, seed or global batch, or an unknown state); not a damaged file."""


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


def _takes_progress(fn: Callable) -> bool:
  """Whether `fn` has a parameter `progress` that a keyword can set."""
  try:
    parameter = inspect.signature(fn).parameters.get(PROGRESS)
  except (TypeError, ValueError):  # No signature (some builtins).
    return False
  return parameter is not None and parameter.kind in (
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
  )


class _Op:
  """What `Map` and `RandomMap` share: a function, its keywords, errors."""

  def __init__(self, fn: Callable, **kwargs):
    if not callable(fn):
      raise TypeError(f'fn: expected a callable, got {fn!r}.')
    if PROGRESS in kwargs:
      raise ValueError(
        f'{PROGRESS}: a keyword the engine sets (the training progress of '
        f'each record), got {PROGRESS}={kwargs[PROGRESS]!r} for {_name(fn)}.'
      )
    self.fn = fn
    self.kwargs = kwargs
    self.takes_progress = _takes_progress(fn)

  def __repr__(self) -> str:
    args = ''.join(f', {k}={v!r}' for k, v in sorted(self.kwargs.items()))
    return f'{type(self).__name__}({_name(self.fn)}{args})'

  def _apply(self, record: Record, *rng) -> Record:
    own, engine = _split(record)
    kwargs = self.kwargs
    if self.takes_progress:
      progress = Progress(int(engine[_STEP]), float(engine[_FRACTION]))
      kwargs = {**kwargs, PROGRESS: progress}
    try:
      out = self.fn(own, *rng, **kwargs)
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
  `functools.partial` of one) when loader workers are used. A `fn` with a
  parameter named `progress` is also given `progress=Progress(...)`, the
  training progress at which the record is consumed (see `Progress`).
  """

  def map(self, element: Record) -> Record:
    return self._apply(element)


class RandomMap(_Op, grain.transforms.RandomMap):
  """A grain RandomMapTransform calling `fn(record, rng, **kwargs)`.

  `rng` is a `np.random.Generator` that depends on (seed, epoch, record
  index) only (see the module docstring); all of `fn`'s randomness must come
  from it. As for `Map`, a `fn` with a parameter named `progress` is also
  given `progress=Progress(...)`: e.g. an augmentation whose strength rises
  with `progress.fraction` (a curriculum).
  """

  def random_map(self, element: Record, rng: np.random.Generator) -> Record:
    return self._apply(element, rng)


Op = Union[Map, RandomMap]


class _Records:
  """The stream of records as the loader reads it (a grain data source).

  Indexed by stream position s (see the module docstring): reads the source
  record that `keys` (a grain `IndexSampler`) puts at s, and adds its index,
  the progress of training that consumes it (step s // B and its fraction of
  `total_steps`; for evaluation, `evaluation=True`, the fixed end of
  training), a padding flag (0 for evaluation positions past the end), and
  handles unreadable records (see the module docstring).
  """

  def __init__(
    self,
    source,
    keys: grain.samplers.IndexSampler,
    *,
    skip_corrupt: bool,
    global_batch: int,
    total_steps: Optional[int],
    evaluation: bool = False,
  ):
    self._source = source
    self._n = len(source)
    self._keys = keys
    self._skip = skip_corrupt
    self._batch = global_batch
    self._total = total_steps
    self._eval = evaluation

  def __len__(self) -> int:
    # Grain reads position s as self[s % len(self)]: every position.
    return len(self._keys)

  def __repr__(self) -> str:
    # Saved in the iterator's state; no object addresses.
    kind = type(self._source)
    own = kind.__repr__ is not object.__repr__
    inner = repr(self._source) if own else f'{kind.__module__}.{kind.__name__}'
    return f'Records({inner}, {self._n} records, skip_corrupt={self._skip})'

  def progress(self, position: int) -> Progress:
    """The `Progress` of the record at stream position `position`."""
    if self._eval:
      return Progress(-1 if self._total is None else self._total, 1.0)
    step = position // self._batch
    fraction = math.nan if self._total is None else min(step / self._total, 1)
    return Progress(step, float(fraction))

  def _read(self, index: int) -> Record:
    try:
      record = self._source[index]
    except Exception as e:
      raise CorruptRecordError(
        f'record {index} of {self!r} could not be read: {type(e).__name__}: {e}'
      ) from e
    own, _ = _split(record)
    return own

  def __getitem__(self, position: int) -> Record:
    position = int(position)
    key = int(self._keys[position].record_key)
    real = key < self._n
    first = key % self._n
    for skipped in range(self._n):
      at = (first + skipped) % self._n
      try:
        record = self._read(at)
      except CorruptRecordError:
        if not self._skip:
          raise
        continue
      step, fraction = self.progress(position)
      record[_INDEX] = np.int64(at)
      record[_SKIPPED] = np.int64(skipped if real else 0)
      record[_REAL] = np.float32(real)
      record[_STEP] = np.int64(step)
      record[_FRACTION] = np.float64(fraction)
      return record
    raise CorruptRecordError(
      f'source: no record of {self!r} could be read (skip_corrupt=True).'
    )


class _BlockSampler:
  """Grain's `IndexSampler` with positions laid out per process and worker.

  The loader asks for index g = i*P + p (the i-th element of process p);
  worker w of W produces elements i = w + W*q and batches b of them, its
  k-th batch being the loader's batch n = k*W + w. That element is given the
  sampler's position s = (start + n)*B + p*b + j (j = q mod b): row j of
  process p's block of global batch start + n, whatever P and W. The record
  key handed to the source (`_Records`) is s itself; the generator of a
  `RandomMap` is the `IndexSampler`'s for s.
  """

  def __init__(
    self,
    sampler: grain.samplers.IndexSampler,
    *,
    global_batch: int,
    process_count: int,
    worker_count: int,
    start: int = 0,
  ):
    self._sampler = sampler
    self._batch = global_batch
    self._procs = process_count
    self._local = global_batch // process_count
    self._workers = max(worker_count, 1)
    self._start = start

  def __len__(self) -> int:
    return len(self._sampler) - self._start * self._batch

  def __repr__(self) -> str:
    return (
      f'BlockSampler({self._sampler!r}, global_batch={self._batch}, '
      f'process_count={self._procs}, worker_count={self._workers}, '
      f'start={self._start})'
    )

  def position(self, index: int) -> int:
    """The sampler position s of the loader's index g (see above)."""
    i, p = divmod(index, self._procs)
    q, w = divmod(i, self._workers)
    k, j = divmod(q, self._local)
    n = self._start + k * self._workers + w
    return n * self._batch + p * self._local + j

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    s = self.position(index)
    return grain.RecordMetadata(index=s, record_key=s, rng=self._sampler[s].rng)


# The iterator state (JSON): {'format': _STATE_FORMAT, 'step': global batches
# consumed, 'skipped_records': this process's count, plus what `_about`
# describes: the data read ('source', 'shuffle', 'seed', 'global_batch') and
# the topology that wrote it ('process_index', 'process_count',
# 'worker_count')}.
_STATE_FORMAT = 'perceiver.train.data/position-1'
_MATCHED = ('source', 'shuffle', 'seed', 'global_batch')
# Before it, the state was {'grain': grain's DataLoader state (version 2),
# 'skipped_records': n}, with these reprs of the sampler.
_LEGACY_SAMPLER = re.compile(
  r'BlockSampler\(IndexSampler\(num_records=\d+, .*shuffle=(True|False), '
  r'num_epochs=None, seed=(\d+)\), global_batch=(\d+), process_count=(\d+), '
  r'worker_count=(\d+)\)'
)


def _legacy_state(saved: Dict[str, Any]) -> Dict[str, Any]:
  """A state of the grain format of earlier versions, in today's format.

  Grain's version-2 state holds, for each worker w (of W >= 1 counted as
  the sampler did), the loader index of the last element it delivered:
  p + w*P + (e - 1)*W*P after e elements, so e = index // (W*P) + 1 and the
  worker delivered e // b batches; the step is their sum.
  """
  grain_state = saved['grain']
  match = _LEGACY_SAMPLER.fullmatch(str(grain_state.get('sampler')))
  if grain_state.get('version') != 2 or match is None:
    raise ResumeError(
      f'state: expected a data position of this engine, got a grain state '
      f'it cannot read (version {grain_state.get("version")!r}, sampler '
      f'{grain_state.get("sampler")!r}).'
    )
  shuffle, seed, batch, procs, workers = match.groups()
  batch, procs, workers = int(batch), int(procs), int(workers)
  local = batch // procs
  step = sum(
    (int(last) // (workers * procs) + 1) // local
    for last in grain_state['last_seen_indices'].values()
  )
  return {
    'step': step,
    'skipped_records': int(saved['skipped_records']),
    'source': grain_state['data_source'],
    'shuffle': shuffle == 'True',
    'seed': int(seed),
    'global_batch': batch,
    'process_index': None,  # Not recorded (it was in the file's name).
    'process_count': procs,
    'worker_count': grain_state['worker_count'],
  }


def _read_state(state: bytes, about: Dict[str, Any]) -> Dict[str, Any]:
  """A saved state (either format) as today's dict, checked against `about`.

  Raises:
    ResumeError: not a state of this engine, or one of other data (source,
      shuffle, seed or global batch).
  """
  try:
    saved = json.loads(state)
  except ValueError as e:
    raise ResumeError(f'state: expected JSON, got {state[:80]!r}.') from e
  if isinstance(saved, dict) and saved.get('format') == _STATE_FORMAT:
    pass
  elif isinstance(saved, dict) and 'grain' in saved:
    saved = _legacy_state(saved)
  else:
    keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
    raise ResumeError(
      f'state: expected a data position ({_STATE_FORMAT!r}, or the grain '
      f'state of earlier versions), got {keys}.'
    )
  for key in _MATCHED:
    if saved[key] != about[key]:
      raise ResumeError(
        f'data: the checkpoint was written reading other training data '
        f'({key} {saved[key]!r} there, {about[key]!r} now); resume with the '
        'same data, seed and batch_size, or use another workdir.'
      )
  return saved


def _topology(state: Dict[str, Any]) -> str:
  workers = state['worker_count']
  return f'{state["process_count"]} process(es) x {workers} loader worker(s)'


class BatchIterator:
  """This process's rows of each global batch, from a `grain.DataLoader`.

  Attributes:
    skipped_records: unreadable records replaced so far by this process
      (`skip_corrupt=True`), over the whole run (it is checkpointed; after a
      resume with another process count, process 0 carries the total).
    last_indices: int64 [b], the source indices of the last batch's rows.
  """

  def __init__(
    self,
    make_loader: Callable[..., grain.DataLoader],
    *,
    about: Dict[str, Any],
    eval_mask: bool = False,
  ):
    """Reads the loader `make_loader(start=t)` makes, from global batch t.

    `about` holds what the state records of the data and topology (see
    `_STATE_FORMAT`).
    """
    self._make = make_loader
    self._about = about
    self._eval = eval_mask
    self._it = None
    self._step = 0
    self.skipped_records = 0
    self.last_indices = None

  def __iter__(self) -> 'BatchIterator':
    return self

  def _iterator(self):
    if self._it is None:
      self._it = iter(self._make(start=self._step))
    return self._it

  def __next__(self) -> Batch:
    batch = dict(next(self._iterator()))
    self._step += 1
    check_batch_keys(batch, 'source')
    self.last_indices = batch.pop(_INDEX)
    self.skipped_records += int(batch.pop(_SKIPPED).sum())
    del batch[_STEP], batch[_FRACTION]
    real = batch.pop(_REAL)
    if self._eval:
      batch[EVAL_MASK] = real.astype(np.float32)
    return batch

  def get_state(self) -> bytes:
    """The position (global batches consumed), the skip count, and the
    data and topology they belong to, as JSON bytes."""
    return json.dumps(
      {
        'format': _STATE_FORMAT,
        'step': self._step,
        'skipped_records': self.skipped_records,
        **self._about,
      },
      indent=1,
    ).encode()

  def _restart(self, step: int, skipped_records: int) -> None:
    self._it = None  # Grain stops the old workers when it is dropped.
    self._step = step
    self.skipped_records = skipped_records

  def set_state(self, state: bytes) -> None:
    """Continues from a `get_state()` of the same process (any W).

    Raises:
      ResumeError: a state of other data, or of another process (index or
        count: see `set_states`).
    """
    saved = _read_state(state, self._about)
    index, count = self._about['process_index'], self._about['process_count']
    if saved['process_count'] != count or saved['process_index'] not in (
      None,  # Earlier states name no process; the file name did.
      index,
    ):
      raise ResumeError(
        f'state: written by process {saved["process_index"]} of '
        f'{_topology(saved)}, read by process {index} of '
        f'{_topology(self._about)}; give every process the states of all '
        'processes (set_states).'
      )
    self._restart(saved['step'], saved['skipped_records'])

  def set_states(self, states: Sequence[bytes]) -> None:
    """Continues from the states of every process of a run with another
    process count (in process order): at their common step, process 0
    carrying their total of skipped records.

    Raises:
      ResumeError: states of other data, or not of one checkpoint (another
        number of states than of processes, different steps).
    """
    saved = [_read_state(s, self._about) for s in states]
    steps = sorted({s['step'] for s in saved})
    counts = sorted({s['process_count'] for s in saved})
    if len(steps) != 1 or counts != [len(saved)]:
      raise ResumeError(
        f'states: expected the states of every process of one checkpoint '
        f'(one step, as many states as processes), got {len(saved)} states '
        f'at steps {steps} of runs of {counts} processes.'
      )
    total = sum(s['skipped_records'] for s in saved)
    self._restart(steps[0], total if self._about['process_index'] == 0 else 0)

  def start_prefetch(self) -> None:
    """Starts the workers (the checkpoint's restore calls it)."""
    self._iterator().start_prefetch()

  def close(self) -> None:
    """Stops the workers and frees their buffers (a later `next()` starts
    them again, at the same position).

    Grain's iterator does that when it is deleted; this drops the only
    reference to it, before the interpreter exits.
    """
    self._it = None


def _check_count(name: str, value, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    what = 'a positive' if minimum else 'a non-negative'
    raise ValueError(f'{name}: expected {what} integer, got {value!r}.')


def _check_source_and_ops(source, ops: Sequence[Op], total_steps) -> int:
  for i, op in enumerate(ops):
    if not isinstance(op, (Map, RandomMap)):
      raise TypeError(
        f'ops[{i}]: expected a data.Map or data.RandomMap, got {op!r}.'
      )
  if total_steps is not None:
    _check_count('total_steps', total_steps, 1)
  else:
    for op in ops:
      if op.takes_progress:
        raise ValueError(
          f'total_steps: expected a positive integer ({op!r} takes '
          f'{PROGRESS}), got None.'
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
  keys: grain.samplers.IndexSampler,
  ops: Sequence[Op],
  *,
  start: int,
  global_batch: int,
  process_index: int,
  process_count: int,
  worker_count: int,
  prefetch: int,
  read_options: Optional[grain.ReadOptions],
) -> grain.DataLoader:
  """The loader of this process's rows of global batches start, start+1..."""
  if not flags.FLAGS.is_parsed():
    # Grain reads its settings from absl flags, also in its worker threads;
    # outside an absl app (tests, notebooks) their defaults apply.
    flags.FLAGS.mark_as_parsed()
  sampler = _BlockSampler(
    keys,
    global_batch=global_batch,
    process_count=process_count,
    worker_count=worker_count,
    start=start,
  )
  return grain.DataLoader(
    data_source=records,
    sampler=sampler,
    operations=[
      *ops,
      grain.transforms.Batch(
        global_batch // process_count, drop_remainder=True
      ),
    ],
    worker_count=worker_count,
    worker_buffer_size=prefetch,
    shard_options=grain.sharding.ShardOptions(
      shard_index=process_index,
      shard_count=process_count,
      drop_remainder=True,
    ),
    read_options=read_options,
  )


def _batches(
  source,
  keys: grain.samplers.IndexSampler,
  ops: Sequence[Op],
  *,
  shuffle: bool,
  seed: int,
  skip_corrupt: bool,
  total_steps: Optional[int],
  evaluation: bool,
  **loader_arguments,
) -> BatchIterator:
  """The `BatchIterator` that `train_iterator` and `eval_batches` return."""
  records = _Records(
    source,
    keys,
    skip_corrupt=skip_corrupt,
    global_batch=loader_arguments['global_batch'],
    total_steps=total_steps,
    evaluation=evaluation,
  )
  about = {
    'source': repr(records),
    'shuffle': shuffle,
    'seed': seed,
    **{
      k: loader_arguments[k]
      for k in (
        'global_batch',
        'process_index',
        'process_count',
        'worker_count',
      )
    },
  }
  return BatchIterator(
    functools.partial(_loader, records, keys, ops, **loader_arguments),
    about=about,
    eval_mask=evaluation,
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
  total_steps: Optional[int] = None,
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
    ops: per-record `Map` / `RandomMap` ops, applied in order; those whose
      function has a `progress` parameter get the record's `Progress`.
    total_steps: the run's number of steps, for `Progress.fraction`;
      required when an op takes `progress`.
    worker_count: W loader worker processes (0: read in this process).
    shuffle: visit each epoch in a fresh permutation (else in index order).
    prefetch: batches each worker keeps ready.
    skip_corrupt: replace unreadable records and count them (see the module
      docstring) instead of raising.
    read_options: grain's reader threads and buffer (default grain's).

  Returns:
    A `BatchIterator`: the t-th `next()` (from 0) is a dict of arrays
    [B/P, ...], the global batch t's rows [p*B/P, (p+1)*B/P);
    `get_state()` / `set_state()` / `set_states()` save and restore its
    position (JSON bytes), also across process and worker counts.

  Raises:
    ValueError: an empty source, B larger than N, B not a multiple of P,
      a seed outside [0, 2**32), a bad count, no total_steps for an op
      that takes progress, an op given a `progress` keyword.
    TypeError: a source without `__len__`/`__getitem__`, an op not wrapped
      in `Map` / `RandomMap`.
  """
  n = _check_source_and_ops(source, ops, total_steps)
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
  return _batches(
    source,
    grain.samplers.IndexSampler(n, shuffle=shuffle, seed=seed),
    ops,
    shuffle=shuffle,
    seed=seed,
    skip_corrupt=skip_corrupt,
    total_steps=total_steps,
    evaluation=False,
    global_batch=global_batch,
    process_index=process_index,
    process_count=process_count,
    worker_count=worker_count,
    prefetch=prefetch,
    read_options=read_options,
  )


def eval_batches(
  source,
  *,
  global_batch: int,
  process_index: int,
  process_count: int,
  ops: Sequence[Op] = (),
  total_steps: Optional[int] = None,
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
      seeded from 0 and the position). Those that take `progress` get the
      fixed `Progress(total_steps, 1.0)`, the end of training, whenever the
      evaluation runs (so that evaluations are comparable).
    total_steps: the run's number of steps; required when an op takes
      `progress`.
    worker_count: W loader worker processes.
    prefetch: batches each worker keeps ready.
    read_options: grain's reader threads and buffer.

  Returns:
    An iterator of this process's rows [B/P, ...] of each global batch,
    with a float32 `EVAL_MASK` entry [B/P]: 1 for a real example, 0 for
    the padding (repeats of real records) that completes the last batch. The number of
    batches is ceil(N / (B*max(W, 1))) * max(W, 1): with W workers, up to
    W-1 extra batches are all padding. Each record appears once with mask 1.

  Raises:
    ValueError / TypeError: as for `train_iterator`.
  """
  n = _check_source_and_ops(source, ops, total_steps)
  _check_topology(global_batch, process_index, process_count, worker_count)
  _check_count('prefetch', prefetch, 0)
  block = global_batch * max(worker_count, 1)
  length = math.ceil(n / block) * block
  return _batches(
    source,
    grain.samplers.IndexSampler(length, shuffle=False, num_epochs=1, seed=0),
    ops,
    shuffle=False,
    seed=0,
    skip_corrupt=False,
    total_steps=total_steps,
    evaluation=True,
    global_batch=global_batch,
    process_index=process_index,
    process_count=process_count,
    worker_count=worker_count,
    prefetch=prefetch,
    read_options=read_options,
  )


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

  The global batch is `config.batch_size`, the seed `config.seed`, the
  number of steps (for `Progress`) `config.total_steps`, and the loader's
  fields of `config.data` (`worker_count`, `prefetch`, `skip_corrupt`; see
  `perceiver.train.config.base_config`) are passed on.
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
  is `config.eval_batch_size`, the number of steps `config.total_steps`,
  the loader's `config.data.worker_count` and `config.data.prefetch`."""
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
    total_steps=config.total_steps,
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
