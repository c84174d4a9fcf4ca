"""Task.evaluators (experiment-level evaluation) and Task.init_params (warm start)."""

import json
import os

import jax
import numpy as np
import pytest

from perceiver import train as train_lib
from perceiver.train import evaluation
from tests import test_train_common as common


def _with(task_fields, **config_overrides):
  """The toy config and task with `task_fields`; its `evaluators` follow
  the toy's held-out means ('': eval/loss, eval/accuracy)."""
  config = common.toy_config(**config_overrides)

  def build(cfg, process_index, process_count):
    task = common.build_toy_task(cfg, process_index, process_count)
    fields = dict(task_fields)
    fields['evaluators'] = [*task.evaluators, *fields.get('evaluators', ())]
    return task._replace(**fields)

  return config, build


def test_a_custom_evaluator_runs_at_every_eval_and_is_logged(tmp_path):
  calls = []

  def run(params, state):
    del state
    # A whole-set quantity the engine cannot know: the L2 norm of the weights.
    norm = np.sqrt(sum(float((x**2).sum()) for x in jax.tree.leaves(params)))
    return {'weight_norm': np.array([norm])}

  evaluator = evaluation.Evaluator(
    name='weights',
    run=run,
    artifacts=lambda metrics, rows, workdir: calls.append(workdir),
  )
  config, build = _with({'evaluators': [evaluator]}, eval_every=2)
  result = train_lib.train(config, build, str(tmp_path))
  # Steps 2 and 4 (eval_every), then the final evaluation at step 6.
  assert calls == [str(tmp_path)] * 3
  final = result['train_state'].params
  expected = np.sqrt(sum(float((x**2).sum()) for x in jax.tree.leaves(final)))
  assert result['eval']['eval/weights/weight_norm'] == pytest.approx(expected)
  assert 'eval/loss' in result['eval']  # the held-out means are kept
  with open(os.path.join(tmp_path, 'result.json')) as f:
    assert json.load(f)['eval/weights/weight_norm'] == pytest.approx(expected)
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  logged = [r['step'] for r in rows if 'eval/weights/weight_norm' in r]
  assert logged == [2, 4, 6]


def _returning(name, metrics):
  return evaluation.Evaluator(
    name=name, run=lambda p, s: None, reduce=lambda rows: metrics
  )


@pytest.mark.parametrize(
  'evaluators, match',
  [
    # Both log 'eval/a/b/c'.
    (
      [_returning('a', {'b/c': 1.0}), _returning('a/b', {'c': 2.0})],
      "'eval/a/b/c', a name another evaluation already has",
    ),
    ([_returning('x', {'y': np.ones(2)})], 'real scalars'),
  ],
)
def test_evaluator_bad_values(tmp_path, evaluators, match):
  config, build = _with({'evaluators': evaluators})
  with pytest.raises(ValueError, match=match):
    train_lib.train(config, build, str(tmp_path))


def test_init_params_warm_start_equals_the_given_params(tmp_path):
  # Train a first job; a second job warm-started from its final parameters
  # with a zero learning rate must keep them exactly.
  first = train_lib.train(
    common.toy_config(), common.build_toy_task, str(tmp_path / 'a')
  )
  trained = jax.device_get(first['train_state'].params)
  seen = []

  def init_params(params, state):
    seen.append(jax.tree.map(np.shape, params))
    return trained, state

  config, build = _with({'init_params': init_params})
  with config.unlocked():
    config.optimizer.base_lr = 0.0
    config.optimizer.weight_decay = 0.0
  second = train_lib.train(config, build, str(tmp_path / 'b'))
  assert seen == [jax.tree.map(np.shape, trained)]
  assert common.params_close(second['train_state'].params, trained, 0, 0)
  # On resume the hook is not applied again.
  with config.unlocked():
    config.total_steps = config.total_steps + 2
  train_lib.train(config, build, str(tmp_path / 'b'))
  assert len(seen) == 1


def test_a_missing_init_checkpoint_stops_a_fresh_start_but_not_a_resume(
  tmp_path,
):
  """A fresh start that would warm-start from a missing path stops before
  writing anything; once the run has its own checkpoints, the path is not
  read again, so a deleted init_checkpoint does not block resuming."""
  source = tmp_path / 'init.npz'
  source.write_bytes(b'')  # exists; the hook below does not read it
  workdir = tmp_path / 'run'
  config, build = _with(
    {'init_params': lambda params, state: (params, state)},
    init_checkpoint=str(source),
  )
  gone = config.copy_and_resolve_references()
  with gone.unlocked():
    gone.init_checkpoint = str(tmp_path / 'nowhere.npz')
  with pytest.raises(ValueError, match=r"init_checkpoint: .*nowhere\.npz'"):
    train_lib.train(gone, build, str(workdir))
  assert not workdir.exists() or not os.listdir(workdir)
  train_lib.train(config, build, str(workdir))
  source.unlink()
  with config.unlocked():
    config.total_steps = config.total_steps + 2
  result = train_lib.train(config, build, str(workdir))
  assert int(result['train_state'].step) == config.total_steps


def test_init_params_shape_mismatch_names_the_parameter(tmp_path):
  def init_params(params, state):
    params = jax.tree.map(lambda x: x, params)
    module = sorted(params)[0]
    name = sorted(params[module])[0]
    params[module][name] = np.zeros((3, 3), np.float32)
    return params, state

  config, build = _with({'init_params': init_params})
  with pytest.raises(ValueError, match=r'task.init_params: params.*expected'):
    train_lib.train(config, build, str(tmp_path))


def test_eval_only_evaluates_the_checkpoint_and_writes_nothing_else(tmp_path):
  config = common.toy_config()
  trained = train_lib.train(config, common.build_toy_task, str(tmp_path))
  steps = sorted(os.listdir(tmp_path / 'checkpoints'))
  with config.unlocked():
    config.eval_only = True
  again = train_lib.train(config, common.build_toy_task, str(tmp_path))
  assert again['eval'] == pytest.approx(trained['eval'])
  assert again['losses'] == {}
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == steps


def test_eval_only_without_checkpoint_or_warm_start_is_refused(tmp_path):
  config = common.toy_config(eval_only=True)
  with pytest.raises(ValueError, match='eval_only: expected a checkpoint'):
    train_lib.train(config, common.build_toy_task, str(tmp_path))
  assert not os.path.exists(tmp_path / 'result.json')
