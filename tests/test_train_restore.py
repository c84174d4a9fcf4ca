"""restore: a trained workdir back to (forward, params, state, config)."""

import importlib
import json
import os
import shutil
import types

import jax
import numpy as np
import pytest

from experiments import digits
from experiments.data import load_mnist_10k
from perceiver import checkpoints
from perceiver.train import checkpoint as checkpoint_lib
from perceiver.train import loop
from perceiver.train import restore


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """digits.py:debug trained for 3 steps."""
  workdir = str(tmp_path_factory.mktemp('digits'))
  config = digits.get_config('debug')
  config.total_steps = 3
  config.checkpoint_every = 3
  config.progress_bar = False
  config.tensorboard = False
  config.plot_curves = False
  result = loop.train(config, digits.build_task, workdir)
  return workdir, config, result


def held_out_images(n=8):
  images, _ = load_mnist_10k()
  return digits.normalise(images[-n:])


def test_restore_predicts_as_the_checkpoint(run):
  workdir, config, result = run
  forward, params, state, restored_config = restore.restore(
    workdir, digits.__file__
  )
  assert restored_config.model.to_dict() == config.model.to_dict()
  assert restored_config.total_steps == 3
  jax.tree.map(
    np.testing.assert_array_equal,
    params,
    jax.device_get(result['train_state'].params),
  )
  batch = {'image': held_out_images()}
  raw_params, raw_state = checkpoint_lib.load_variables(workdir)
  want, _ = digits.make_forward(config.model).apply(
    raw_params, raw_state, None, batch, is_training=False
  )
  got, _ = forward.apply(params, state, None, batch, is_training=False)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  model = restore.restore(workdir, 'experiments.digits')
  predicted = model.predict(batch)
  assert predicted.shape == (8, digits.NUM_CLASSES)
  np.testing.assert_allclose(predicted, want, rtol=1e-5, atol=1e-5)


def test_export_to_npz_predicts_the_same(run, tmp_path):
  workdir, config, _ = run
  path = restore.export(workdir, str(tmp_path / 'digits.npz'))
  params, state = checkpoints.load(path)
  batch = {'image': held_out_images()}
  forward = digits.make_forward(config.model)
  got, _ = forward.apply(params, state, None, batch, is_training=False)
  model = restore.restore(workdir, digits)
  np.testing.assert_allclose(got, model.predict(batch), rtol=1e-5, atol=1e-5)


def test_restore_reads_the_experiment_the_run_recorded(run, tmp_path):
  workdir, config, _ = run
  with open(os.path.join(workdir, 'experiment.json')) as f:
    recorded = json.load(f)
  # loop.train records the file of an experiment's build_task (main.py
  # also records the --config variant).
  assert recorded == {
    'file': os.path.abspath(digits.__file__),
    'module': 'experiments.digits',
    'variant': None,
  }
  model = restore.restore(workdir)
  assert model.config.to_dict() == config.to_dict()

  moved = str(tmp_path / 'moved')
  shutil.copytree(workdir, moved)
  path = os.path.join(moved, 'experiment.json')
  with open(path, 'w') as f:  # the repository moved: the module still is
    json.dump(dict(recorded, file='/gone/digits.py'), f)
  assert restore.restore(moved).config.to_dict() == config.to_dict()
  with open(path, 'w') as f:
    json.dump(dict(recorded, file='/gone/digits.py', module=None), f)
  with pytest.raises(ValueError, match="experiment: .*'/gone/digits.py'"):
    restore.restore(moved)
  os.remove(path)
  with pytest.raises(ValueError, match='experiment: .*does not record'):
    restore.restore(moved)
  restore.restore(moved, 'experiments/digits.py')  # given, not recorded


def test_a_field_added_after_the_run_takes_the_main_config_value(run, tmp_path):
  """An older config.json without a field the experiment has now: restore
  fills it from `get_config('')` (new fields default to the old behaviour)
  and keeps every recorded value."""
  workdir, config, _ = run
  older = str(tmp_path / 'older')
  shutil.copytree(workdir, older)
  path = os.path.join(older, 'config.json')
  with open(path) as f:
    values = json.load(f)
  del values['model']['dropout_prob']
  with open(path, 'w') as f:
    json.dump(values, f)
  main = digits.get_config('')
  main.unlock()
  main.model.dropout_prob = 0.25  # the value the filled field must take
  fake = types.SimpleNamespace(
    get_config=lambda variant='': main if not variant else config,
    build_forward=digits.build_forward,
  )
  restored = restore.load_config(older, fake, 'debug')
  assert restored.model.dropout_prob == 0.25
  want = config.to_dict()
  want['model']['dropout_prob'] = 0.25
  assert restored.to_dict() == want
  model = restore.restore(older, digits)  # the real one: 0.0 in both
  main_value = digits.get_config('').model.dropout_prob
  assert model.config.model.dropout_prob == main_value
  batch = {'image': held_out_images()}
  np.testing.assert_allclose(
    model.predict(batch),
    restore.restore(workdir, digits).predict(batch),
    rtol=1e-6,
    atol=1e-6,
  )


def test_bad_workdir_or_experiment(run, tmp_path):
  workdir, _, _ = run
  with pytest.raises(ValueError, match='with config.json'):
    restore.restore(str(tmp_path), digits)
  with pytest.raises(ValueError, match='expected an experiment file'):
    restore.restore(workdir, str(tmp_path / 'missing.py'))


def test_experiment_record():
  mlm = os.path.join(os.path.dirname(digits.__file__), 'mlm.py')
  assert restore.experiment_record(f'{mlm}:debug') == {
    'file': mlm,
    'module': 'experiments.mlm',
    'variant': 'debug',
  }
  assert restore.experiment_record('/elsewhere/mine.py') == {
    'file': '/elsewhere/mine.py',
    'module': None,
    'variant': None,
  }
  # Only an experiment's build_task names its file.
  assert restore.experiment_record(None, lambda c, i, n: None) is None
  assert restore.experiment_record(None, None) is None


def _shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def _abstract_model(forward, inputs):
  """Shapes of (params, state) and of the eval outputs, by jax.eval_shape."""

  def init_and_apply():
    rng = jax.random.PRNGKey(0)
    params, state = forward.init(rng, inputs, is_training=True)
    outputs, _ = forward.apply(params, state, rng, inputs, is_training=False)
    return (params, state), outputs

  return _shapes(jax.eval_shape(init_and_apply))


# What build_forward takes of the task's example batch, and what of the
# task forward's outputs it gives; the whole of each where not named.
# ImageNet's restored model is the bare classifier: images -> logits.
_PREDICTS = {'imagenet': ('image', 'logits')}


@pytest.mark.parametrize('name', ['digits', 'imagenet', 'mlm', 'glue', 'flow'])
def test_build_forward_is_the_model_build_task_trains(name):
  """For each experiment's :debug config, restore's model has the shapes of
  the trained one: the same parameters and state, the same outputs."""
  experiment = importlib.import_module(f'experiments.{name}')
  config = experiment.get_config('debug')
  task = experiment.build_task(config, 0, 1)
  input_key, output_key = _PREDICTS.get(name, (None, None))
  batch = task.example_batch
  try:
    variables, outputs = _abstract_model(task.forward, batch)
    # The run's config.json holds `Task.config` (the sizes the data gave).
    got = _abstract_model(
      experiment.build_forward(task.config or config),
      batch[input_key] if input_key else batch,
    )
  finally:
    close_data = getattr(task.train_data, 'close', None)
    if close_data is not None:
      close_data()
  assert got == (variables, outputs[output_key] if output_key else outputs)
