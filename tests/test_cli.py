"""The command line: field help, short user errors (status 2), safe resumes.

Runs `python -m experiments.main` on the digits `:debug` experiment.
"""

import importlib
import inspect
import json
import os

import pytest

from tests import test_train_common as common
from perceiver.train import config as config_lib
from perceiver.train import metrics as metrics_lib

DEBUG = '--config=experiments/digits.py:debug'
EXPERIMENTS = (
  'audioset',
  'digits',
  'flow',
  'glue',
  'imagenet',
  'mlm',
  'video_autoencoding',
)


def _assert_user_error(proc, *parts):
  """Status 2, a short message holding `parts`, no traceback."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[0].startswith('error: ') and len(lines) <= 5, proc.stderr
  for part in parts:
    assert part in proc.stderr, proc.stderr


def test_help_config_lists_every_field_with_value_and_description():
  from experiments import digits  # pylint: disable=g-import-not-at-top

  proc = common.run_main(DEBUG, '--help_config')
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = digits.get_config('debug')
  for name, value in config_lib.flat_fields(config).items():
    line = next(
      (x for x in proc.stdout.splitlines() if x.split()[:1] == [name]), None
    )
    assert line is not None, name
    assert f'{name} = {value!r}' in line
  assert 'global batch: examples per update' in proc.stdout
  assert 'random translation in pixels' in proc.stdout  # digits' comment
  # --help points to it.
  assert '--help_config' in common.run_main('--help').stdout


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_every_field_of_every_experiment_is_described(name):
  experiment = importlib.import_module(f'experiments.{name}')
  comments = config_lib.field_comments(inspect.getsource(experiment))
  rows = config_lib.describe(experiment.get_config(), comments)
  base = config_lib.flat_fields(config_lib.base_config())
  assert set(base) <= {n for n, _, _ in rows}
  for field, _, text in rows:
    assert text.strip(), field
    if field in base:
      assert text == config_lib.DESCRIPTIONS[field]


def test_base_fields_have_their_own_descriptions():
  base = config_lib.flat_fields(config_lib.base_config())
  assert set(base) == set(config_lib.DESCRIPTIONS)
  for field, text in config_lib.DESCRIPTIONS.items():
    assert len(text) > 10 and 'experiment field' not in text, field


def test_field_comments_of_assignments_and_sections():
  source = """
  c.epochs = 10  # passes
  c.data.update(
    dict(
      dir='',  # the root
    )
  )
  c.model = ml_collections.ConfigDict(
    dict(
      width=3,  # channels
      depth=2,
    )
  )
  c.other = 1
"""
  assert config_lib.field_comments(source) == {
    'epochs': 'passes',
    'data.dir': 'the root',
    'model.width': 'channels',
  }


@pytest.mark.parametrize(
  'args,parts',
  [
    (
      ('--config.batch_sise=32',),
      ('config.batch_sise: no such field', 'did you mean config.batch_size?'),
    ),
    (
      ('--config.model.num_latent=4',),
      ('did you mean config.model.num_latents?',),
    ),
    (('--config.batch_size=abc',), ('--config.batch_size=abc', 'int()')),
    (
      ('--config.batch_size=20000',),
      ('batch_size: expected at most num_train=512', 'got 20000'),
    ),
    (
      ('--config.model.num_self_attend_heads=3',),
      ('model.num_self_attend_heads: expected a divisor',),
    ),
    (('--config.optimizer.name=sgd',), ('optimizer.name: expected one of',)),
    # A tuple field parsed element by element: the second is not a pattern.
    (
      ("--config.init_must_load=('embed', '(')",),
      ("init_must_load: expected regular expressions, got '('",),
    ),
  ],
)
def test_user_errors_are_short_and_exit_with_status_2(tmp_path, args, parts):
  proc = common.run_main(DEBUG, f'--workdir={tmp_path / "w"}', *args)
  _assert_user_error(proc, *parts)
  assert not os.path.exists(tmp_path / 'w')


def test_a_tuple_field_takes_a_python_tuple():
  proc = common.run_main(
    DEBUG,
    "--config.init_must_load=('embed', 'perceiver_encoder/.*')",
    '--help_config',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "init_must_load = ('embed', 'perceiver_encoder/.*')" in proc.stdout


def test_missing_config_file_and_unknown_variant(tmp_path):
  proc = common.run_main(
    '--config=experiments/nope.py', f'--workdir={tmp_path}'
  )
  _assert_user_error(proc, 'config: expected an experiment file')
  proc = common.run_main(
    '--config=experiments/digits.py:nope', f'--workdir={tmp_path}'
  )
  _assert_user_error(proc, 'config: expected a variant of digits among')


def test_verbose_shows_the_traceback(tmp_path):
  proc = common.run_main(
    DEBUG, f'--workdir={tmp_path}', '--config.batch_sise=3', '--verbose'
  )
  assert proc.returncode != 0 and 'Traceback' in proc.stderr
  proc = common.run_main(
    DEBUG, f'--workdir={tmp_path}', '--config.optimizer.name=sgd', '--verbose'
  )
  assert proc.returncode != 0 and 'Traceback' in proc.stderr


def test_resumes_refuse_other_shapes_and_leave_finished_runs_alone(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = (
    DEBUG,
    f'--workdir={workdir}',
    '--config.checkpoint_every=2',
    '--config.log_every=2',
    '--config.progress_bar=false',
    '--config.tensorboard=false',
    '--config.plot_curves=false',
  )
  proc = common.run_main(*flags, '--config.total_steps=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The run records its experiment file and variant, for restore(workdir).
  recorded = os.path.join(workdir, 'experiment.json')
  with open(recorded) as f:
    assert json.load(f) == {
      'file': os.path.join(common.ROOT, 'experiments', 'digits.py'),
      'module': 'experiments.digits',
      'variant': 'debug',
    }
  os.remove(recorded)  # as a run from before it was recorded
  before = common.snapshot(workdir)

  # The debug model has 8 latents: a parameter of shape (8, 16).
  proc = common.run_main(
    *flags, '--config.total_steps=4', '--config.model.num_latents=4'
  )
  _assert_user_error(
    proc,
    "params['perceiver_encoder/~/trainable_position_encoding']['pos_embs']",
    'has shape (8, 16) in the checkpoints, (4, 16) with this config',
    'model.num_latents 8 -> 4',
  )
  assert 'Event loop is closed' not in proc.stderr
  assert common.snapshot(workdir) == before  # no config.json, experiment.json

  proc = common.run_main(*flags, '--config.total_steps=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'already finished at step 4; nothing to do' in proc.stdout
  assert common.snapshot(workdir) == before  # result.json, metrics.jsonl too

  proc = common.run_main(*flags, '--config.total_steps=6')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '  total_steps: 4 -> 6\n' in proc.stdout
  assert 'Resumed from the checkpoint at step 4.' in proc.stdout
  assert os.path.isfile(recorded)  # written with config.json
  records = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records if 'loss' in r] == [2, 4, 6]
  assert [r['step'] for r in records if 'eval/loss' in r] == [4, 6]
  with open(os.path.join(workdir, 'result.json')) as f:
    assert json.load(f)['step'] == 6


def test_engine_explains_a_total_steps_of_zero_from_a_large_batch():
  from experiments import glue  # pylint: disable=g-import-not-at-top

  config = glue.get_config('movie_reviews')  # total_steps from epochs
  config.epochs = 1
  config.num_train = 100  # as `config.from_data` fills it in
  config.batch_size = config.num_train + 8
  assert config.total_steps == 0
  with pytest.raises(
    ValueError,
    match=rf'^batch_size: expected at most num_train={config.num_train} '
    r'\(the number of training examples\), got',
  ):
    config_lib.validate(config, device_count=1)
