"""Evaluators: the engine runs a task's named evaluations.

References: the toy model applied to the whole held-out set at once on one
device (no batches, no padding, no gather) and naive numpy reductions of
that; in `test_two_processes_with_eight_devices_gather_every_row`, two
processes of 4 fake CPU devices each (8 devices, a held-out set that the
global batch does not divide).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver.train import data as data_lib
from perceiver.train import evaluation
from perceiver.train import loop
from perceiver.train import mesh as mesh_lib
from tests import test_train_common as common

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HELD_OUT = 64  # toy_arrays()[192:]
EVAL_BATCH = 48  # 64 = 48 + 16 real rows: the second batch is padded
REPORT = 'toy held-out'


def _held_out():
  return {k: v[192:] for k, v in common.toy_arrays().items()}


def _predict(outputs, batch):
  """Rows: the logits, the label and whether the top class is the label."""
  return {
    'logits': outputs,
    'label': batch['label'],
    'hit': (jnp.argmax(outputs, -1) == batch['label']).astype(jnp.float32),
  }


def _reduce(rows):
  return {
    'top1': float(np.mean(rows['hit'])),
    'mean_logit': float(np.mean(rows['logits'])),
  }


def _evaluators(config, process_index, process_count, out_dir):
  """A batches-kind evaluator (with samples and artifacts), a custom one
  and a combined one; artifacts save what they get to `out_dir`."""
  data = lambda: data_lib.eval_batches(
    data_lib.ArraySource(_held_out()),
    global_batch=config.eval_batch_size,
    process_index=process_index,
    process_count=process_count,
  )

  def save_rows(metrics, rows, workdir):
    del workdir
    np.savez(os.path.join(out_dir, 'rows.npz'), **rows)
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
      json.dump(metrics, f)

  def weight_norm(params, state):
    del state  # A whole-model quantity: needs every parameter here.
    leaves = jax.tree.leaves(params)
    return {
      'norm': np.sqrt([sum(float((np.asarray(x) ** 2).sum()) for x in leaves)])
    }

  return (
    evaluation.Evaluator(
      name='toy',
      data=data,
      predict=lambda out, batch: dict(_predict(out, batch), x=batch['x']),
      samples=('x',),
      reduce=_reduce,
      report=lambda m, rows: (
        f'{REPORT}: top-1 {m["top1"]:.4f} on {len(rows["hit"])} examples'
      ),
      artifacts=save_rows,
    ),
    evaluation.Evaluator(name='weights', run=weight_norm),
    evaluation.Evaluator(
      name='',
      combine=lambda m: {'score': 10 * m['toy/top1'] + m['weights/norm']},
      report=lambda m, rows: '',
    ),
  )


def _build(out_dir):
  def build(config, process_index, process_count):
    task = common.build_toy_task(config, process_index, process_count)
    return task._replace(
      evaluators=_evaluators(config, process_index, process_count, out_dir)
    )

  return build


def _reference(params, state):
  """The rows and metrics of the whole held-out set, on one device."""
  forward = common.build_toy_task(common.toy_config(), 0, 1).forward
  held = _held_out()
  logits, _ = forward.apply(
    jax.device_get(params), jax.device_get(state), None, held, is_training=False
  )
  logits = np.asarray(logits)
  hit = (logits.argmax(-1) == held['label']).astype(np.float32)
  norm = np.sqrt(
    sum(float((np.asarray(x) ** 2).sum()) for x in jax.tree.leaves(params))
  )
  rows = {'logits': logits, 'label': held['label'], 'hit': hit}
  metrics = {
    'eval/toy/top1': hit.mean(),
    'eval/toy/mean_logit': logits.mean(),
    'eval/weights/norm': norm,
    'eval/score': 10 * hit.mean() + norm,
  }
  return rows, metrics


def _check(out_dir, params, state, metrics):
  ref_rows, ref_metrics = _reference(params, state)
  rows = dict(np.load(os.path.join(out_dir, 'rows.npz')))
  assert sorted(rows) == ['hit', 'label', 'logits', 'x']
  for k in ref_rows:  # every real row once, in order; no padding rows
    np.testing.assert_allclose(rows[k], ref_rows[k], rtol=1e-5, atol=1e-6)
  # The samples entry: the first global batch's rows only.
  np.testing.assert_array_equal(rows['x'], _held_out()['x'][:EVAL_BATCH])
  assert set(metrics) >= set(ref_metrics)
  for k, v in ref_metrics.items():
    assert metrics[k] == pytest.approx(v, rel=1e-5), k


def test_evaluators_in_a_run_match_one_device(tmp_path, capsys):
  config = common.toy_config(eval_batch_size=EVAL_BATCH, eval_every=3)
  out = loop.train(config, _build(str(tmp_path)), str(tmp_path / 'run'))
  ts = out['train_state']
  _check(str(tmp_path), ts.params, ts.state, out['eval'])
  with open(tmp_path / 'run' / 'result.json') as f:
    saved = json.load(f)
  for k in ('eval/toy/top1', 'eval/weights/norm', 'eval/score'):
    assert saved[k] == out['eval'][k]
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records if 'eval/toy/top1' in r] == [3, 6]
  printed = capsys.readouterr().out
  assert printed.count(f'{REPORT}: top-1 ') == 2
  assert f'on {HELD_OUT} examples' in printed
  assert 'weights: norm ' in printed  # the default report


def test_rows_on_eight_devices_equal_one_device(tmp_path):
  # 8 fake devices in a subprocess (the device count is fixed at start-up).
  code = (
    'import sys; from tests import test_train_evaluation as t; '
    't._single_process_worker(sys.argv[1])'
  )
  run = common.run_python(['-c', code, str(tmp_path)], devices=8, timeout=300)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert run.stdout.count(f'{REPORT}: top-1 ') == 1
  _check_saved(str(tmp_path))


def _single_process_worker(out_dir):
  assert jax.device_count() == 8
  _run_and_save(out_dir)


def _run_and_save(out_dir):
  config = common.toy_config(eval_batch_size=EVAL_BATCH)
  out = loop.train(config, _build(out_dir), os.path.join(out_dir, 'run'))
  ts = out['train_state']
  params, state = evaluation.gather((ts.params, ts.state))  # every process
  if jax.process_index() == 0:
    np.save(
      os.path.join(out_dir, 'state.npy'),
      {'params': params, 'state': state, 'eval': out['eval']},
      allow_pickle=True,
    )


def _check_saved(out_dir):
  saved = np.load(os.path.join(out_dir, 'state.npy'), allow_pickle=True)[()]
  _check(out_dir, saved['params'], saved['state'], saved['eval'])


def _two_process_worker(out_dir, process_id, port):
  from perceiver.train import distributed  # pylint: disable=g-import-not-at-top

  distributed.initialize(f'127.0.0.1:{port}', 2, process_id)
  assert jax.device_count() == 8 and jax.process_count() == 2
  _run_and_save(out_dir)


def test_two_processes_with_eight_devices_gather_every_row(tmp_path):
  env = common.cpu_env(4)
  port = common.free_port()
  code = (
    'import sys; from tests import test_train_evaluation as t; '
    't._two_process_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))'
  )
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', code, str(tmp_path), str(i), str(port)],
      env=env,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  # The report is printed by process 0 only.
  assert outputs[0].count(f'{REPORT}: top-1 ') == 1
  assert f'{REPORT}: top-1 ' not in outputs[1]
  _check_saved(str(tmp_path))


def _tiny_runner(*evaluators):
  import haiku as hk  # pylint: disable=g-import-not-at-top

  forward = hk.transform_with_state(lambda batch, is_training: batch['x'] * 2.0)
  mesh = mesh_lib.make_mesh(1, jax.devices()[:1])
  return evaluation.Runner(evaluators, forward, precision=None, mesh=mesh)


def _batches(n=10, batch=4):
  return data_lib.eval_batches(
    data_lib.ArraySource({'x': np.arange(n, dtype=np.float32)}),
    global_batch=batch,
    process_index=0,
    process_count=1,
  )


def test_rows_of_the_whole_set_in_order_without_padding(tmp_path):
  x = np.arange(10, dtype=np.float32)
  seen = {}
  ev = evaluation.Evaluator(
    name='double',
    data=_batches,
    predict=lambda out, batch: {'y': out, 'pair': jnp.stack([out, -out], -1)},
    reduce=lambda rows: seen.update(rows) or {'sum': float(rows['y'].sum())},
  )
  metrics = _tiny_runner(ev)({}, {}, str(tmp_path))
  # 10 examples in batches of 4: the last batch has 2 padding rows.
  np.testing.assert_array_equal(seen['y'], 2 * x)
  np.testing.assert_array_equal(seen['pair'], np.stack([2 * x, -2 * x], -1))
  assert metrics == {'eval/double/sum': pytest.approx(90.0)}


def test_evaluators_sharing_a_predict_compile_it_once(tmp_path):
  traces = []

  def predict(out, batch):
    traces.append(out.shape)
    return {'y': out}

  a, b, c = [
    evaluation.Evaluator(
      name=name, data=_batches, predict=fn, reduce=evaluation.mean_rows
    )
    for name, fn in (
      ('a', predict),
      ('b', predict),
      ('c', lambda o, b: {'y': -o}),
    )
  ]
  assert _tiny_runner(a)({}, {}, str(tmp_path)) == {'eval/a/y': 9.0}
  alone = len(traces)
  metrics = _tiny_runner(a, b, c)({}, {}, str(tmp_path))
  # Each evaluator gets its own rows (mean of 2 x 0..9 = 9) ...
  assert metrics == {'eval/a/y': 9.0, 'eval/b/y': 9.0, 'eval/c/y': -9.0}
  # ... and 'b' reuses the step traced and compiled for 'a'.
  assert len(traces) == 2 * alone


def test_a_shared_predict_is_checked_on_each_batch_shape():
  # Rows of [B] for the first evaluator's [B] inputs, of [2 B] for the
  # second's [B, 2]: the second is refused although its step is shared.
  def flatten(out, batch):
    return {'s': out.reshape(-1)}

  def pairs():
    return data_lib.eval_batches(
      data_lib.ArraySource({'x': np.ones((10, 2), np.float32)}),
      global_batch=4,
      process_index=0,
      process_count=1,
    )

  a, b = [
    evaluation.Evaluator(
      name=name, data=data, predict=flatten, reduce=evaluation.mean_rows
    )
    for name, data in (('a', _batches), ('b', pairs))
  ]
  assert _tiny_runner(a)({}, {}, None) == {'eval/a/s': 9.0}
  with pytest.raises(ValueError, match=r"'b': predict: expected \[B, ...\]"):
    _tiny_runner(a, b)({}, {}, None)


def test_batches_without_the_mask_are_refused():
  ev = evaluation.Evaluator(
    name='bare',
    data=lambda: [{'x': np.zeros(2, np.float32)}],
    predict=lambda out, batch: {'y': out},
  )
  with pytest.raises(ValueError, match="'bare': data: expected the engine"):
    _tiny_runner(ev)({}, {}, None)


def test_predict_without_the_batch_axis_is_refused():
  ev = evaluation.Evaluator(
    name='scalar', data=_batches, predict=lambda out, batch: {'s': out.sum()}
  )
  with pytest.raises(ValueError, match=r"predict: expected \[B, ...\].*'s'"):
    _tiny_runner(ev)({}, {}, None)


@pytest.mark.parametrize(
  'fields, match',
  [
    ({}, 'exactly one of'),
    ({'data': _batches}, 'exactly one of'),
    ({'run': lambda p, s: {}, 'combine': lambda m: {}}, 'exactly one of'),
    ({'run': lambda p, s: {}, 'samples': ('x',)}, 'samples'),
    ({'name': None, 'run': lambda p, s: {}}, 'name: expected a string'),
  ],
)
def test_an_evaluator_of_no_single_kind_is_refused(fields, match):
  fields = {'name': 'e', **fields}
  with pytest.raises(ValueError, match=match):
    evaluation.Evaluator(**fields)


def test_repeated_names_and_bad_values_are_refused():
  run = evaluation.Evaluator(name='a', run=lambda p, s: {'v': np.ones(1)})
  with pytest.raises(ValueError, match=r"distinct names, got \['a'\]"):
    _tiny_runner(run, run)
  # '' reporting 'a/v' and 'a' reporting 'v' both log 'eval/a/v'.
  first = evaluation.Evaluator(
    name='', run=lambda p, s: None, reduce=lambda rows: {'a/v': 1.0}
  )
  second = evaluation.Evaluator(
    name='a', run=lambda p, s: None, reduce=lambda rows: {'v': 2.0}
  )
  with pytest.raises(ValueError, match="'eval/a/v', a name another"):
    _tiny_runner(first, second)({}, {}, None)
  vector = evaluation.Evaluator(
    name='v', run=lambda p, s: None, reduce=lambda rows: {'x': np.ones(2)}
  )
  with pytest.raises(ValueError, match='real scalars'):
    _tiny_runner(vector)({}, {}, None)


def test_eval_batches_refuse_a_source_with_the_reserved_key():
  batches = data_lib.eval_batches(
    data_lib.ArraySource(
      {'x': np.zeros(4, np.float32), data_lib.EVAL_MASK: np.ones(4)}
    ),
    global_batch=4,
    process_index=0,
    process_count=1,
  )
  with pytest.raises(ValueError, match='source: the key'):
    next(iter(batches))


def _masked_toy_task(key):
  """The toy task with its own `key` entry [B, DIM] (an input mask) in
  every batch, which the model uses; the engine must not replace it."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from perceiver.train.task import Task  # pylint: disable=g-import-not-at-top

  def build_task(config, process_index, process_count):
    arrays = common.toy_arrays()
    arrays[key] = np.ones_like(arrays['x'])
    train = {k: v[:192] for k, v in arrays.items()}
    held = {k: v[192:] for k, v in arrays.items()}

    def forward_fn(batch, *, is_training):
      del is_training
      x = batch['x'] * batch[key]  # fails if the mask is not [B, DIM]
      return hk.Linear(common.NUM_CLASSES)(x)

    def per_example(logits, batch):
      return {
        'loss': optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['label']
        )
      }

    loader = dict(process_index=process_index, process_count=process_count)
    return Task(
      forward=hk.transform_with_state(forward_fn),
      per_example=per_example,
      train_data=data_lib.train_iterator(
        data_lib.ArraySource(train),
        global_batch=config.batch_size,
        seed=0,
        **loader,
      ),
      example_batch={k: v[:2] for k, v in train.items()},
      evaluators=[
        evaluation.Evaluator(
          name='',
          data=lambda: data_lib.eval_batches(
            data_lib.ArraySource(held),
            global_batch=config.eval_batch_size,
            **loader,
          ),
          predict=per_example,
        )
      ],
    )

  return build_task


def test_a_task_with_its_own_mask_key_trains_and_evaluates(tmp_path):
  # 64 held-out examples in batches of 48: the last one is padded.
  config = common.toy_config(total_steps=2, eval_batch_size=48)
  out = loop.train(config, _masked_toy_task('mask'), str(tmp_path))
  assert set(out['eval']) == {'eval/loss'}
  assert os.path.exists(tmp_path / 'result.json')


def test_a_task_using_the_reserved_key_is_refused_naming_it(tmp_path):
  config = common.toy_config(total_steps=2)
  with pytest.raises(ValueError, match=f"'{data_lib.EVAL_MASK}' is reserved"):
    loop.train(config, _masked_toy_task(data_lib.EVAL_MASK), str(tmp_path))


# ---------------------------------------------------------------------------
# Shared metrics
# ---------------------------------------------------------------------------


def test_psnr_hand_values():
  mse = np.asarray([1.0, 0.01, 1e-4, 0.25, 0.0])
  # 10 log10(1 / MSE); 0 is floored at 1e-10: 100 dB.
  expected = [0.0, 20.0, 40.0, 10 * np.log10(4), 100.0]
  np.testing.assert_allclose(evaluation.psnr(mse), expected, rtol=1e-6)


def naive_average_precision(scores, labels):
  """AP as the area under the step precision-recall curve, one threshold at
  a time (every distinct score)."""
  ap, prev_recall = 0.0, 0.0
  for thr in sorted(set(scores), reverse=True):
    chosen = scores >= thr
    tp = np.sum(chosen & labels)
    recall = tp / labels.sum()
    ap += (recall - prev_recall) * tp / chosen.sum()
    prev_recall = recall
  return ap


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_mean_average_precision_against_naive(seed):
  rng = np.random.default_rng(seed)
  labels = rng.random((40, 6)) < 0.3
  labels[:, 5] = False  # no positive: left out
  scores = np.round(rng.random((40, 6)) + labels * 0.3, 1)  # with ties
  expected = np.mean(
    [naive_average_precision(scores[:, c], labels[:, c]) for c in range(5)]
  )
  assert evaluation.mean_average_precision(scores, labels) == pytest.approx(
    expected, abs=1e-12
  )
  assert evaluation.mean_average_precision(labels * 1.0, labels) == 1.0


def test_mean_average_precision_hand_values():
  scores = np.asarray(
    [[0.9, 0.9, 0.3], [0.8, 0.5, 0.2], [0.7, 0.5, 0.1], [0.6, 0.1, 0.0]]
  )
  labels = np.asarray([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
  # Class 0: hits at ranks 1 and 3: AP = 1/2 x 1 + 1/2 x 2/3 = 5/6.
  # Class 1: ranks 2 and 3 tie (one of them a hit), then a hit at rank 4:
  # AP = 1/2 x 1/3 + 1/2 x 2/4 = 5/12. Class 2 has no positive: left out.
  got = evaluation.mean_average_precision(scores, labels)
  assert got == pytest.approx((5 / 6 + 5 / 12) / 2, abs=1e-12)


@pytest.mark.parametrize(
  'scores, labels, match',
  [
    (np.zeros((3, 2)), np.ones((3, 3)), r'expected equal \[N, C\] shapes'),
    (np.zeros(3), np.ones(3), r'expected equal \[N, C\] shapes'),
    (np.zeros((3, 2)), np.zeros((3, 2)), 'labels: expected a class with a'),
  ],
)
def test_mean_average_precision_refuses_bad_input(scores, labels, match):
  with pytest.raises(ValueError, match=match):
    evaluation.mean_average_precision(scores, labels)
