"""Elastic resume: the data position is the step, on any topology.

References: the global stream written out by hand (`test_data_engine`'s
`_reference`: records, generators and progress of every position) and, for
whole runs, an uninterrupted run. Under test: iterators that stop after
some batches on P processes x W workers and continue on P' x W' from their
states; `experiments.main` runs of digits (random shifts on) that change
topology mid-run; checkpoints written before the state was the step.

`data/legacy_data_states.json` holds iterator states written by the engine
before this format (grain's DataLoader state and the skip count), made with
that engine by: the 'engine_PxW_process_p' states, `_source()` read by
`train_iterator(global_batch=4, seed=5, process_index=p, process_count=P,
worker_count=W)` for 7 batches; the 'toy_1xW_process_0' states, the toy
task's `train_data` (`test_train_common`, `data.worker_count=W`) after 10
batches.
"""

import json
import os
import shutil

import numpy as np
import pytest

from perceiver.train import checkpoint as checkpoint_lib
from perceiver.train import data as data_lib
from perceiver.train import loop
from tests import test_data_engine as engine
from tests import test_train_common as common
from tests import test_train_resume as resume

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, SEED = 4, 5  # the legacy states' iterators


def _legacy(name):
  with open(os.path.join(HERE, 'data', 'legacy_data_states.json')) as f:
    return json.dumps(json.load(f)[name]).encode()


def _topology(procs, workers):
  return engine._iterators(
    batch=BATCH, seed=SEED, procs=procs, workers=workers, ops=engine.OPS
  )


def _want(start, steps):
  return engine._reference(steps, batch=BATCH, seed=SEED, start=start)


@pytest.mark.parametrize(
  'before,after', [((2, 1), (1, 2)), ((1, 2), (4, 0)), ((2, 0), (2, 2))]
)
def test_states_continue_on_another_topology(before, after):
  """P x W for 7 batches (into the second epoch), then P' x W' for 6."""
  first = _topology(*before)
  engine.assert_batches_equal(engine._read(first, 7), _want(0, 7))
  states = [it.get_state() for it in first]
  second = _topology(*after)
  for p, it in enumerate(second):
    if before[0] == after[0]:
      it.set_state(states[p])  # same process: any worker count
    else:
      it.set_states(states)
  engine.assert_batches_equal(engine._read(second, 6), _want(7, 6))


def test_skip_count_total_is_carried_by_process_zero():
  def flaky(procs, index):
    return data_lib.train_iterator(
      engine._Flaky(8, bad=[2, 5, 6]),
      global_batch=4,
      seed=0,
      process_index=index,
      process_count=procs,
      shuffle=False,
      skip_corrupt=True,
    )

  two = [flaky(2, p) for p in range(2)]
  for it in two:
    next(it), next(it)  # one epoch: 1 + 1 + 2 records replaced
  assert [it.skipped_records for it in two] == [2, 2]
  one = flaky(1, 0)
  one.set_states([it.get_state() for it in two])
  assert one.skipped_records == 4
  assert next(one)['x'].tolist() == [0, 1, 3, 3]  # epoch 2 from its start
  other = flaky(4, 3)
  other.set_states([it.get_state() for it in two])
  assert other.skipped_records == 0


@pytest.mark.parametrize(
  'names,after',
  [
    # The same topology, then others (W and P changed).
    (['engine_2x1_process_0', 'engine_2x1_process_1'], (2, 1)),
    (['engine_2x1_process_0', 'engine_2x1_process_1'], (2, 0)),
    (['engine_1x2_process_0'], (2, 2)),
  ],
)
def test_states_of_earlier_versions_continue(names, after):
  states = [_legacy(name) for name in names]
  second = _topology(*after)
  for p, it in enumerate(second):
    if len(states) == len(second):
      it.set_state(states[p])
    else:
      it.set_states(states)
  engine.assert_batches_equal(engine._read(second, 6), _want(7, 6))


def _one(**kwargs):
  args = dict(
    global_batch=BATCH,
    seed=SEED,
    process_index=0,
    process_count=1,
    ops=engine.OPS,
    total_steps=engine.TOTAL_STEPS,
  )
  return data_lib.train_iterator(engine._source(), **{**args, **kwargs})


def test_states_that_cannot_continue_are_refused_by_name():
  state = _one().get_state()
  with pytest.raises(
    data_lib.ResumeError, match=r'other training data \(seed 5 there, 6 now\)'
  ):
    _one(seed=6).set_state(state)
  with pytest.raises(data_lib.ResumeError, match='global_batch 4 there, 2'):
    _one(global_batch=2).set_state(state)
  with pytest.raises(
    data_lib.ResumeError,
    match=r'written by process 0 of 1 process\(es\) x 0 loader worker\(s\), '
    r'read by process 1 of 2 .*\(set_states\)',
  ):
    _one(process_index=1, process_count=2).set_state(state)
  later = _one()
  next(later)
  with pytest.raises(data_lib.ResumeError, match=r'at steps \[0, 1\]'):
    _one().set_states([state, later.get_state()])
  old = json.loads(_legacy('engine_1x2_process_0'))
  old['grain']['version'] = 3
  with pytest.raises(
    data_lib.ResumeError, match='a grain state it cannot read .version 3'
  ):
    _one().set_state(json.dumps(old).encode())


def test_checkpoint_of_earlier_versions_resumes_exactly(tmp_path):
  """A toy checkpoint at step 10 whose data item is what the engine wrote
  before (grain's state, grain's handler, no topology.json) continues like
  an uninterrupted run, with the same worker count and with another."""
  straight = loop.train(
    resume._config(), common.build_toy_task, str(tmp_path / 'straight')
  )
  old = str(tmp_path / 'old')
  with pytest.raises(common.Interrupted):
    loop.train(
      resume._config(**{'model.interrupt_at_step': 12}),
      common.build_toy_task,
      old,
    )
  for step in os.listdir(os.path.join(old, 'checkpoints')):
    step_dir = os.path.join(old, 'checkpoints', step)
    os.remove(os.path.join(step_dir, 'data', checkpoint_lib.TOPOLOGY_JSON))
    with open(os.path.join(step_dir, '_CHECKPOINT_METADATA')) as f:
      metadata = json.load(f)
    metadata['item_handlers']['data'] = (
      'grain._src.python.checkpoint.handler.CheckpointHandler'
    )
    with open(os.path.join(step_dir, '_CHECKPOINT_METADATA'), 'w') as f:
      json.dump(metadata, f)
  with open(
    os.path.join(old, 'checkpoints', '10', 'data', 'process_0-of-1.json'), 'w'
  ) as f:
    f.write(_legacy('toy_1x0_process_0').decode())
  for workers in (0, 2):
    workdir = str(tmp_path / f'workers_{workers}')
    shutil.copytree(old, workdir)
    resumed = loop.train(
      resume._config(**{'data.worker_count': workers}),
      common.build_toy_task,
      workdir,
    )
    assert resumed['start_step'] == 10
    np.testing.assert_array_equal(
      [resumed['losses'][s] for s in range(11, 21)],
      [straight['losses'][s] for s in range(11, 21)],
    )


DIGITS = [
  '--config=experiments/digits.py:debug',
  '--config.batch_size=16',
  '--config.checkpoint_every=5',
  # total_steps changes between the halves; the schedule must not.
  '--config.optimizer.schedule=constant',
  '--config.log_every=1',
  '--config.progress_bar=False',
  '--config.tensorboard=False',
  '--config.plot_curves=False',
]


def _digits(workdir, steps, *, procs, devices, workers):
  return common.launch_main(
    DIGITS
    + [
      f'--workdir={workdir}',
      f'--config.total_steps={steps}',
      f'--config.data.worker_count={workers}',
    ],
    num_processes=procs,
    devices=devices,
  )


def _ok(runs):
  for code, out in runs:
    assert code == 0, out[-3000:]


def test_digits_run_continues_on_another_topology(tmp_path):
  """2 processes x 2 devices x 1 worker for 10 steps, then 1 process x 2
  devices x 2 workers for 10 more == 20 straight on 1 process x 4 devices
  (augmentation on); 1 process x 3 devices is refused in one line."""
  straight, elastic = str(tmp_path / 'straight'), str(tmp_path / 'elastic')
  _ok(_digits(straight, 20, procs=1, devices=4, workers=0))
  _ok(_digits(elastic, 10, procs=2, devices=2, workers=1))

  ((code, out),) = _digits(elastic, 20, procs=1, devices=3, workers=0)
  assert code != 0
  (line,) = [x for x in out.splitlines() if 'was written by' in x]
  assert 'step 10' in line, line
  assert '2 process(es) x 4 device(s); this run has 1 process(es) x 3 ' in line

  _ok(_digits(elastic, 20, procs=1, devices=2, workers=2))
  want, got = common.train_losses(straight), common.train_losses(elastic)
  assert sorted(got) == sorted(want) == list(range(1, 21))
  np.testing.assert_allclose(
    [got[s] for s in want], [want[s] for s in want], rtol=1e-5
  )
  # Every parameter but the attention key biases (`linear_1/b`): their
  # gradient is zero up to rounding (a softmax ignores a constant added to
  # all of a query's logits), which Adam scales up to whole steps, so they
  # differ between device counts even in uninterrupted runs.
  want_params, _ = checkpoint_lib.load_variables(straight)
  got_params, _ = checkpoint_lib.load_variables(elastic)
  compared = 0
  for module, values in want_params.items():
    for name, value in values.items():
      if module.endswith('attention/linear_1') and name == 'b':
        continue
      np.testing.assert_allclose(
        got_params[module][name], value, atol=1e-6, err_msg=module
      )
      compared += 1
  assert compared > 20
