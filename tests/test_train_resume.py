"""Resuming continues exactly: 20 steps straight == 10 + restart + 10.

The reference is an uninterrupted run with the same config in another
workdir. Dropout, a warmup+cosine schedule and a shuffled dataset whose epoch
(12 batches) ends between the two halves make every piece of state matter:
the rng (folded in by step), the optimizer state, the schedule position and
the data iterator position (grain's state, also with 1 and 2 loader
workers, after a SIGKILL).
"""

import os
import signal

import numpy as np
import pytest

from tests import test_train_common as common
from perceiver.train import loop
from perceiver.train import metrics as metrics_lib


_OVERRIDES = {
  'total_steps': 20,
  'checkpoint_every': 5,
  'keep_checkpoints': 2,
  'model.dropout': 0.2,
  'optimizer.schedule': 'warmup_cosine',
  'optimizer.warmup_steps': 4,
}


def _config(**overrides):
  return common.toy_config(**{**_OVERRIDES, **overrides})


def test_restart_continues_exactly(tmp_path):
  straight = loop.train(
    _config(plot_curves=True), common.build_toy_task, str(tmp_path / 'straight')
  )
  workdir = str(tmp_path / 'restarted')
  with pytest.raises(common.Interrupted):
    loop.train(
      _config(**{'model.interrupt_at_step': 12}), common.build_toy_task, workdir
    )
  resumed = loop.train(
    _config(plot_curves=True), common.build_toy_task, workdir
  )

  # Interrupted while fetching the batch of step 13: the checkpoint at 10
  # is the latest complete one.
  assert resumed['start_step'] == 10
  assert sorted(resumed['losses']) == list(range(11, 21))
  np.testing.assert_array_equal(
    [resumed['losses'][s] for s in range(11, 21)],
    [straight['losses'][s] for s in range(11, 21)],
  )
  for a, b in zip(*(jax_leaves(r['train_state']) for r in (straight, resumed))):
    np.testing.assert_array_equal(a, b)
  assert straight['eval'] == resumed['eval']

  # Every step is logged once in the resumed run's metrics file, and the
  # last `keep_checkpoints` checkpoints are kept.
  records = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  train_steps = [r['step'] for r in records if 'loss' in r]
  assert train_steps == list(range(1, 21))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
    '15',
    '20',
  ]
  for name in ('config.json', 'training_curves.png', 'result.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert not os.path.exists(os.path.join(workdir, 'tensorboard'))  # Off.


@pytest.mark.parametrize('workers', [0, 1, 2])
def test_sigkill_and_resume_continues_exactly_with_workers(tmp_path, workers):
  """20 steps == 10 + SIGKILL (while fetching step 13's batch) + 10, with
  the grain iterator state of the checkpoint at 10 and loader workers."""
  straight = loop.train(
    _config(**{'data.worker_count': workers}),
    common.build_toy_task,
    str(tmp_path / 'straight'),
  )
  workdir = str(tmp_path / 'killed')
  args = [
    '--config=tests/test_train_common.py',
    f'--workdir={workdir}',
    f'--config.data.worker_count={workers}',
    *(f'--config.{k}={v}' for k, v in _OVERRIDES.items()),
  ]
  ((code, out),) = common.launch_main(args + ['--config.model.kill_at_step=12'])
  assert code == -signal.SIGKILL, out[-3000:]
  resumed = loop.train(
    _config(**{'data.worker_count': workers}), common.build_toy_task, workdir
  )
  assert resumed['start_step'] == 10
  np.testing.assert_array_equal(
    [resumed['losses'][s] for s in range(11, 21)],
    [straight['losses'][s] for s in range(11, 21)],
  )
  for a, b in zip(*(jax_leaves(r['train_state']) for r in (straight, resumed))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('async_checkpoint', [False, True])
def test_finished_run_restarts_without_training(tmp_path, async_checkpoint):
  config = _config(total_steps=5, async_checkpoint=async_checkpoint)
  first = loop.train(config, common.build_toy_task, str(tmp_path))
  again = loop.train(config, common.build_toy_task, str(tmp_path))
  assert again['start_step'] == 5 and not again['losses']
  assert again['eval'] == first['eval']
  for a, b in zip(
    jax_leaves(first['train_state']), jax_leaves(again['train_state'])
  ):
    np.testing.assert_array_equal(a, b)


def jax_leaves(train_state):
  import jax  # pylint: disable=g-import-not-at-top

  return [
    np.asarray(x)
    for x in jax.tree.leaves(
      (train_state.params, train_state.opt_state, train_state.step)
    )
  ]


def test_shape_changing_config_is_refused_and_the_workdir_untouched(
  tmp_path,
):
  workdir = str(tmp_path)
  loop.train(_config(total_steps=5), common.build_toy_task, workdir)
  before = common.snapshot(workdir)

  with pytest.raises(ValueError) as e:
    loop.train(
      _config(total_steps=10, **{'model.width': 8}),
      common.build_toy_task,
      workdir,
    )
  message = str(e.value)
  assert message.startswith('workdir: the checkpoints in')
  assert "params['head']['w'] has shape (16, 4) in the checkpoints, (8, 4)" in (
    message
  )
  assert 'model.width 16 -> 8' in message
  assert len(message.splitlines()) <= 3
  assert common.snapshot(workdir) == before


def test_finished_run_rerun_changes_nothing(tmp_path, capsys):
  workdir = str(tmp_path)
  loop.train(
    _config(total_steps=5, tensorboard=True), common.build_toy_task, workdir
  )
  before = common.snapshot(workdir)
  capsys.readouterr()
  again = loop.train(
    _config(total_steps=5, tensorboard=True), common.build_toy_task, workdir
  )
  assert 'already finished at step 5; nothing to do' in capsys.readouterr().out
  assert again['start_step'] == 5 and not again['losses']
  assert common.snapshot(workdir) == before


def test_shape_preserving_changes_resume_and_are_listed(tmp_path, capsys):
  workdir = str(tmp_path)
  loop.train(_config(total_steps=5), common.build_toy_task, workdir)
  capsys.readouterr()
  out = loop.train(
    _config(total_steps=10, **{'optimizer.base_lr': 5e-3}),
    common.build_toy_task,
    workdir,
  )
  said = capsys.readouterr().out
  assert '  optimizer.base_lr: 0.01 -> 0.005\n' in said
  assert '  total_steps: 5 -> 10\n' in said
  assert out['start_step'] == 5 and sorted(out['losses']) == list(range(6, 11))
  records = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  steps = [r['step'] for r in records if 'loss' in r]
  assert steps == list(range(1, 11))  # every step once
  assert [r['step'] for r in records if 'eval/loss' in r] == [5, 10]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert '"total_steps": 10' in f.read()


def test_final_evaluation_rerun_replaces_the_one_before(tmp_path):
  """A run stopped after its last checkpoint but before result.json: the
  final evaluation runs again and its metrics row appears once."""
  workdir = str(tmp_path)
  loop.train(_config(total_steps=5), common.build_toy_task, workdir)
  os.remove(os.path.join(workdir, 'result.json'))
  loop.train(_config(total_steps=5), common.build_toy_task, workdir)
  records = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records if 'eval/loss' in r] == [5]
  assert os.path.exists(os.path.join(workdir, 'result.json'))
