"""The grain data layer: same global batches for any topology, resume, errors.

References: the global stream written out by hand from grain's sampler
(position s of the stream is record `IndexSampler[s].record_key`, its
generator `Philox(seed + s)`), a plain Python loop over the records for the
evaluation pass, and sources written to fail at known indices.
"""

import numpy as np
import pytest

import grain
from perceiver.train import data as data_lib

N = 22


def _source(n=N):
  return data_lib.ArraySource(
    {'x': np.arange(n, dtype=np.int64), 'y': np.arange(n, dtype=np.float32)}
  )


def draw(record, rng, *, high):
  """A random op: remembers one integer drawn from its generator."""
  return dict(record, draw=rng.integers(high))


def double(record):
  return dict(record, y=record['y'] * 2)


def _global_batches(steps, *, batch, seed, procs, workers, ops, n=N):
  its = [
    data_lib.train_iterator(
      _source(n),
      global_batch=batch,
      seed=seed,
      process_index=p,
      process_count=procs,
      ops=ops,
      worker_count=workers,
    )
    for p in range(procs)
  ]
  out = []
  for _ in range(steps):
    parts = [next(it) for it in its]
    assert all(len(part['x']) == batch // procs for part in parts)
    out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  return out


def _reference(steps, *, batch, seed, n=N, high=1000):
  """Global batch t = stream positions [tB, (t+1)B), by hand."""
  sampler = grain.samplers.IndexSampler(n, shuffle=True, seed=seed)
  out = []
  for t in range(steps):
    pos = range(t * batch, (t + 1) * batch)
    x = np.array([sampler[s].record_key for s in pos])
    draws = np.array(
      [
        np.random.Generator(np.random.Philox(key=seed + s)).integers(high)
        for s in pos
      ]
    )
    out.append({'x': x, 'y': 2 * x.astype(np.float32), 'draw': draws})
  return out


OPS = (data_lib.RandomMap(draw, high=1000), data_lib.Map(double))


@pytest.mark.parametrize(
  'procs,workers', [(1, 0), (2, 0), (4, 0), (1, 2), (2, 1)]
)
def test_global_batches_do_not_depend_on_processes_or_workers(procs, workers):
  steps, batch, seed = 7, 8, 11  # 56 examples: crosses two epochs of 22.
  got = _global_batches(
    steps, batch=batch, seed=seed, procs=procs, workers=workers, ops=OPS
  )
  want = _reference(steps, batch=batch, seed=seed)
  for t in range(steps):
    for k in want[t]:
      np.testing.assert_array_equal(got[t][k], want[t][k], err_msg=(t, k))


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
    worker_count=workers,
  )
  first = data_lib.train_iterator(_source(), **kwargs)
  for _ in range(7):
    next(first)
  state = first.get_state()
  want = [next(first) for _ in range(5)]
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


def test_input_pipeline_benchmark_times_the_digits_loader():
  from experiments import benchmark  # pylint: disable=g-import-not-at-top

  (record,) = benchmark.input_pipeline([0], batches=3, warmup=1)
  assert record['worker_count'] == 0 and record['batches'] == 3
  assert record['examples_per_s'] == pytest.approx(
    3 * record['batch_size'] / record['seconds']
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
