"""The grain data layer: same global batches for any topology, resume, errors.

References: the global stream written out by hand from grain's sampler
(position s of the stream is record `IndexSampler[s].record_key`, its
generator `Philox(seed + s)`, its training progress step s // B and fraction
min(step / total_steps, 1)), a plain Python loop over the records for the
evaluation pass, and sources written to fail at known indices.
"""

import numpy as np
import pytest

import grain
from perceiver.train import data as data_lib

N = 22
TOTAL_STEPS = 5  # fewer than some tests read: the fraction stops at 1.


def _source(n=N):
  return data_lib.ArraySource(
    {'x': np.arange(n, dtype=np.int64), 'y': np.arange(n, dtype=np.float32)}
  )


def draw(record, rng, *, high, progress):
  """A random op: remembers one integer drawn from its generator and the
  step of the progress it was given."""
  return dict(record, draw=rng.integers(high), step=np.int64(progress.step))


def note_fraction(record, *, progress):
  """A deterministic op: remembers the fraction of the progress."""
  return dict(record, fraction=np.float64(progress.fraction))


def double(record):
  return dict(record, y=record['y'] * 2)


def _iterators(*, batch, seed, procs, workers, ops, n=N):
  """The training iterators of every process of a topology."""
  return [
    data_lib.train_iterator(
      _source(n),
      global_batch=batch,
      seed=seed,
      process_index=p,
      process_count=procs,
      ops=ops,
      total_steps=TOTAL_STEPS,
      worker_count=workers,
    )
    for p in range(procs)
  ]


def _read(its, steps):
  """`steps` global batches, the rows of every process's iterator joined."""
  out = []
  for _ in range(steps):
    parts = [next(it) for it in its]
    assert all(len(part['x']) == len(parts[0]['x']) for part in parts)
    out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  return out


def _global_batches(steps, **kwargs):
  return _read(_iterators(**kwargs), steps)


def _reference(steps, *, batch, seed, n=N, high=1000, start=0):
  """Global batch t = stream positions [tB, (t+1)B), by hand, from t=start."""
  sampler = grain.samplers.IndexSampler(n, shuffle=True, seed=seed)
  out = []
  for t in range(start, start + steps):
    pos = range(t * batch, (t + 1) * batch)
    x = np.array([sampler[s].record_key for s in pos])
    draws = np.array(
      [
        np.random.Generator(np.random.Philox(key=seed + s)).integers(high)
        for s in pos
      ]
    )
    out.append(
      {
        'x': x,
        'y': 2 * x.astype(np.float32),
        'draw': draws,
        'step': np.full(batch, t),  # consumed by step t
        'fraction': np.full(batch, min(t / TOTAL_STEPS, 1.0)),
      }
    )
  return out


def assert_batches_equal(got, want):
  assert len(got) == len(want)
  for t, (g, w) in enumerate(zip(got, want)):
    assert sorted(g) == sorted(w), t
    for k in w:
      np.testing.assert_array_equal(g[k], w[k], err_msg=(t, k))


OPS = (
  data_lib.RandomMap(draw, high=1000),
  data_lib.Map(double),
  data_lib.Map(note_fraction),
)


@pytest.mark.parametrize(
  'procs,workers', [(1, 0), (2, 0), (4, 0), (1, 2), (2, 1)]
)
def test_global_batches_do_not_depend_on_processes_or_workers(procs, workers):
  steps, batch, seed = 7, 8, 11  # 56 examples: crosses two epochs of 22.
  got = _global_batches(
    steps, batch=batch, seed=seed, procs=procs, workers=workers, ops=OPS
  )
  assert_batches_equal(got, _reference(steps, batch=batch, seed=seed))


def test_epochs_are_fresh_permutations():
  batches = _reference(11, batch=4, seed=3)
  stream = np.concatenate([b['x'] for b in batches])
  first, second = stream[:N], stream[N : 2 * N]
  assert sorted(first) == sorted(second) == list(range(N))
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.arange(N))


@pytest.mark.parametrize('workers', [0, 2])
def test_state_resumes_the_same_batches(workers):
  kwargs = dict(
    global_batch=4,
    seed=5,
    process_index=1,
    process_count=2,
    ops=OPS,
    total_steps=TOTAL_STEPS,
    worker_count=workers,
  )
  first = data_lib.train_iterator(_source(), **kwargs)
  for _ in range(7):
    next(first)
  state = first.get_state()
  want = [next(first) for _ in range(5)]
  np.testing.assert_array_equal(want[0]['step'], [7, 7])  # batch 7 next
  second = data_lib.train_iterator(_source(), **kwargs)
  second.set_state(state)
  for w in want:
    got = next(second)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


@pytest.mark.parametrize('procs,workers', [(1, 0), (2, 0), (2, 2)])
def test_eval_batches_cover_every_record_once(procs, workers):
  batch, n = 8, 21
  seen, padding = [], 0
  for p in range(procs):
    for b in data_lib.eval_batches(
      _source(n),
      global_batch=batch,
      process_index=p,
      process_count=procs,
      ops=(data_lib.Map(double),),
      worker_count=workers,
    ):
      assert (
        b[data_lib.EVAL_MASK].dtype == np.float32
        and len(b['x']) == batch // procs
      )
      np.testing.assert_array_equal(b['y'], 2 * b['x'])
      seen.extend(b['x'][b[data_lib.EVAL_MASK] == 1].tolist())
      padding += int((b[data_lib.EVAL_MASK] == 0).sum())
  assert sorted(seen) == list(range(n))
  block = batch * max(workers, 1)  # whole blocks of W batches
  assert padding == -(-n // block) * block - n


def test_eval_ops_see_the_end_of_training():
  (batch,) = data_lib.eval_batches(
    _source(8),
    global_batch=8,
    process_index=0,
    process_count=1,
    ops=(data_lib.RandomMap(draw, high=9), data_lib.Map(note_fraction)),
    total_steps=TOTAL_STEPS,
  )
  np.testing.assert_array_equal(batch['step'], np.full(8, TOTAL_STEPS))
  np.testing.assert_array_equal(batch['fraction'], np.ones(8))
  # The engine's own entries are not in the batch.
  assert sorted(batch) == [
    data_lib.EVAL_MASK,
    *('draw', 'fraction', 'step', 'x', 'y'),
  ]


def test_progress_needs_total_steps_and_is_the_engines_keyword():
  args = dict(global_batch=4, seed=0, process_index=0, process_count=1)
  with pytest.raises(
    ValueError,
    match=r'total_steps: .*note_fraction.* takes progress\), got None',
  ):
    data_lib.train_iterator(
      _source(), ops=(data_lib.Map(note_fraction),), **args
    )
  with pytest.raises(ValueError, match='total_steps: expected a positive'):
    data_lib.train_iterator(_source(), total_steps=0, **args)
  with pytest.raises(ValueError, match='progress: a keyword the engine sets'):
    data_lib.Map(note_fraction, progress=0.5)
  # An op without a `progress` parameter is not given one.
  assert not data_lib.Map(double).takes_progress
  assert data_lib.RandomMap(draw, high=2).takes_progress


class _Flaky:
  """A source whose records `bad` raise, as a reader of a damaged file."""

  def __init__(self, n, bad):
    self.n, self.bad = n, set(bad)

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    if index in self.bad:
      raise OSError(f'file part-0.rec: bad checksum at record {index}')
    return {'x': np.int64(index)}


def _first_pass(source, batch=4, **kwargs):
  it = data_lib.train_iterator(
    source,
    global_batch=batch,
    seed=0,
    process_index=0,
    process_count=1,
    shuffle=False,
    **kwargs,
  )
  return it, [next(it)['x'].tolist() for _ in range(len(source) // batch)]


def test_corrupt_record_is_an_error_naming_its_index():
  with pytest.raises(
    data_lib.CorruptRecordError, match='record 5 of .*checksum'
  ):
    _first_pass(_Flaky(8, bad=[5]))


def test_corrupt_records_skipped_when_asked_and_counted():
  it, batches = _first_pass(_Flaky(8, bad=[2, 5, 6]), skip_corrupt=True)
  # Each bad slot holds the next readable record.
  assert batches == [[0, 1, 3, 3], [4, 7, 7, 7]]
  assert it.skipped_records == 1 + 1 + 2
  resumed = data_lib.train_iterator(
    _Flaky(8, bad=[2, 5, 6]),
    global_batch=4,
    seed=0,
    process_index=0,
    process_count=1,
    shuffle=False,
    skip_corrupt=True,
  )
  resumed.set_state(it.get_state())
  assert resumed.skipped_records == 4


def fail_on_seven(record):
  if record['x'] == 7:
    raise ValueError('truncated JPEG')
  return record


@pytest.mark.parametrize('workers', [0, 1])
def test_failing_op_names_the_record(workers):
  with pytest.raises(Exception, match='fail_on_seven.*record 7.*truncated'):
    _first_pass(
      _Flaky(8, bad=[]),
      ops=(data_lib.Map(fail_on_seven),),
      worker_count=workers,
    )


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (
      dict(global_batch=24),
      r'global_batch: .*at most .*\(22 training examples\), got 24',
    ),
    (dict(global_batch=6, process_count=4), 'multiple of the process count 4'),
    (dict(seed=-1), r'seed: expected an integer in \[0, 2\*\*32\)'),
    (dict(worker_count=-1), 'worker_count: expected a non-negative'),
    (dict(process_index=2), r'process_index: .*\[0, 2\), got 2'),
  ],
)
def test_bad_arguments_are_named(kwargs, match):
  args = dict(global_batch=4, seed=0, process_index=0, process_count=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    data_lib.train_iterator(_source(), **args)


def test_empty_source_and_unwrapped_ops_are_named():
  with pytest.raises(ValueError, match='source: expected at least one record'):
    data_lib.eval_batches(
      _Flaky(0, []), global_batch=2, process_index=0, process_count=1
    )
  with pytest.raises(TypeError, match=r'ops\[0\]: expected a data.Map'):
    data_lib.train_iterator(
      _source(),
      global_batch=2,
      seed=0,
      process_index=0,
      process_count=1,
      ops=(double,),
    )


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_digits_shift_moves_a_pixel_by_the_drawn_offsets(seed):
  from experiments import digits  # pylint: disable=g-import-not-at-top

  image = np.zeros((1, 28, 28, 1), np.float32)
  image[0, 10, 20, 0] = 5.0
  padded = digits.pad(image, 2)[0]
  out = digits.random_shift(
    {'image': padded}, np.random.default_rng(seed), max_shift=2
  )['image']
  dy, dx = np.random.default_rng(seed).integers(0, 5, size=2)
  assert out.shape == (28, 28, 1)
  assert np.argwhere(out[..., 0] == 5.0).tolist() == [[12 - dy, 22 - dx]]
  # Everything else is the image's zeros or the padding's background.
  background = np.float32((0.0 - digits.MNIST_MEAN) / digits.MNIST_STD)
  assert set(np.unique(out[out != 5.0]).tolist()) <= {0.0, float(background)}
