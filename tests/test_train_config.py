"""Config checks, the command line and the digits experiment end to end.

Bad values must be rejected before anything is built or compiled, with the
field's name in the message; the command line must accept overrides and
write the workdir (config, metrics, checkpoints, plots).
"""

import json
import os

import pytest

from tests import test_train_common as common
from perceiver.train import config as config_lib
from perceiver.train import loop
from perceiver.train import metrics as metrics_lib


BAD = [
  # (override, device_count, field named in the message)
  ({'batch_size': 12}, 8, 'batch_size'),
  ({'batch_size': 16, 'accumulation_steps': 4}, 8, 'batch_size'),
  ({'batch_size': 16, 'accumulation_steps': 3}, 1, 'batch_size'),
  ({'total_steps': 0}, 1, 'total_steps'),
  ({'log_every': -1}, 1, 'log_every'),
  ({'checkpoint_every': 0}, 1, 'checkpoint_every'),
  ({'keep_checkpoints': 0}, 1, 'keep_checkpoints'),
  ({'fsdp': 3}, 8, 'fsdp'),
  ({'precision': 'float8'}, 1, 'precision'),
  ({'nonfinite': 'ignore'}, 1, 'nonfinite'),
  ({'eval_batch_size': 20}, 8, 'eval_batch_size'),
  ({'optimizer.name': 'sgd'}, 1, 'optimizer.name'),
  ({'optimizer.schedule': 'step'}, 1, 'optimizer.schedule'),
  ({'optimizer.base_lr': -1.0}, 1, 'optimizer.base_lr'),
  ({'optimizer.b2': 1.0}, 1, 'optimizer.b2'),
  ({'data.worker_count': -1}, 1, 'data.worker_count'),
  ({'data.prefetch': -2}, 1, 'data.prefetch'),
]


@pytest.mark.parametrize('overrides,devices,field', BAD)
def test_bad_values_are_rejected_naming_the_field(overrides, devices, field):
  config = common.toy_config(**overrides)
  with pytest.raises(ValueError) as info:
    config_lib.validate(config, device_count=devices)
  message = str(info.value)
  assert message.startswith(field + ':') or message.startswith(field + '='), (
    message
  )


def test_good_config_passes_on_eight_devices():
  config_lib.validate(
    common.toy_config(batch_size=32, accumulation_steps=2, fsdp=2),
    device_count=8,
  )


def test_train_rejects_before_building_anything(tmp_path):
  def build_task(*_):
    raise AssertionError('the task was built for an invalid config')

  with pytest.raises(ValueError, match='optimizer.name'):
    loop.train(
      common.toy_config(**{'optimizer.name': 'sgd'}), build_task, str(tmp_path)
    )
  assert not os.listdir(tmp_path)


def test_init_checkpoint_is_refused_by_a_task_that_cannot_warm_start(
  tmp_path,
):
  # The toy task, like digits, has no init_params: a path would be ignored.
  config = common.toy_config(init_checkpoint='runs/elsewhere')
  with pytest.raises(ValueError, match="init_checkpoint: expected ''"):
    loop.train(config, common.build_toy_task, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_command_line_rejects_bad_override_naming_the_field(tmp_path):
  proc = common.run_main(
    '--config=experiments/digits.py:debug',
    '--config.optimizer.name=sgd',
    f'--workdir={tmp_path}',
  )
  assert proc.returncode != 0
  assert "optimizer.name: expected one of ['lamb', 'adamw'], got 'sgd'" in (
    proc.stderr
  ), proc.stderr[-2000:]


def test_digits_debug_from_the_command_line_fills_the_workdir(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = common.run_main(
    '--config=experiments/digits.py:debug',
    f'--workdir={workdir}',
    '--config.total_steps=6',
    '--config.log_every=3',
    '--config.checkpoint_every=3',
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert 'Held-out: accuracy' in proc.stdout
  assert 'step 6/6' in proc.stderr  # The progress bar.

  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['total_steps'] == 6 and saved['log_every'] == 3  # Overrides.
  records = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records if 'loss' in r] == [3, 6]
  assert any('eval/accuracy' in r for r in records)
  assert os.path.getsize(os.path.join(workdir, 'training_curves.png')) > 1000
  assert any(
    name.startswith('events.out.tfevents')
    for name in os.listdir(os.path.join(workdir, 'tensorboard'))
  )
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']


@pytest.mark.parametrize(
  'field,value',
  [
    ('model.spatial_downsample', 2),
    ('model.prep_type', 'fourier'),
    ('model.num_latents', 0),
    ('num_train', 9000),
    ('data.max_shift', -1),
    ('model.num_self_attend_heads', 3),
  ],
)
def test_digits_fields_are_checked_naming_the_field(field, value):
  from experiments import digits  # pylint: disable=g-import-not-at-top

  config = digits.get_config()
  config.unlock()
  *path, last = field.split('.')
  target = config
  for p in path:
    target = target[p]
  target[last] = value
  with pytest.raises(ValueError, match=f'^{field}: expected'):
    digits.validate(config)


def test_digits_batch_larger_than_the_split_names_both_and_total_steps():
  from experiments import digits  # pylint: disable=g-import-not-at-top

  config = digits.get_config('debug')  # num_train 512, 1 epoch
  config.batch_size = 1024
  assert config.total_steps == 0
  with pytest.raises(
    ValueError,
    match=r'^batch_size: expected at most num_train=512 .*got 1024.*'
    r'total_steps = .* = 0',
  ):
    digits.validate(config)


@pytest.mark.parametrize('variant', ['', 'debug'])
def test_digits_configs_pass_their_checks(variant):
  from experiments import digits  # pylint: disable=g-import-not-at-top

  config = digits.get_config(variant)
  digits.validate(config)
  config_lib.validate(config, device_count=1)


@pytest.mark.parametrize(
  'args,field',
  [
    (('127.0.0.1:1234', None, None), 'coordinator_address'),
    (('127.0.0.1:1234', 2, 2), 'process_id'),
    (('127.0.0.1:1234', 0, 0), 'num_processes'),
  ],
)
def test_distributed_flags_are_checked(args, field):
  from perceiver.train import distributed  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match=field):
    distributed.initialize(*args)


def test_single_process_needs_no_coordinator():
  from perceiver.train import distributed  # pylint: disable=g-import-not-at-top

  assert distributed.initialize() is False
  assert distributed.initialize('127.0.0.1:1234', 1, 0) is False


@pytest.mark.parametrize(
  'environ,size',
  [
    ({}, 1),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, 1),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, 4),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, 2),
    ({'TPU_WORKER_HOSTNAMES': 'a,b,c,d'}, 4),
  ],
)
def test_cluster_size_from_the_environment(environ, size):
  from perceiver.train import distributed  # pylint: disable=g-import-not-at-top

  assert distributed.cluster_size(environ) == size


def _sized_config(**overrides):
  """The toy config with an epoch schedule over a training set it does not
  declare (num_train None until the data gives it)."""
  c = common.toy_config(**overrides)
  c.unlock()
  c.epochs = 1
  c.num_train = config_lib.placeholder()
  c.total_steps = (
    c.get_ref('epochs') * c.get_ref('num_train') // c.get_ref('batch_size')
  )
  c.lock()
  return c


def test_from_data_fills_the_unset_size_and_checks_a_set_one():
  config = _sized_config(batch_size=16)
  config.epochs = 3
  assert config.num_train is None and config.total_steps is None
  config_lib.validate(config, device_count=1)  # waits for the data
  used = config_lib.from_data(config, {'num_train': 40}, where='the toy set')
  assert (used.num_train, used.total_steps) == (40, 3 * 40 // 16)  # 7
  assert config.num_train is None and config.total_steps is None  # a copy
  assert config_lib.data_summary(config, used) == (
    'Training data: num_train=40 (counted in the data); total_steps=7 = '
    'epochs 3 x num_train 40 // batch_size 16.'
  )
  config.total_steps = 5  # set explicitly: it wins over the epochs
  used = config_lib.from_data(config, {'num_train': 40}, where='the toy set')
  assert (used.num_train, used.total_steps) == (40, 5)
  assert config_lib.data_summary(config, used).endswith('total_steps=5 (set).')
  config.num_train = 41
  with pytest.raises(
    ValueError,
    match=r'^num_train: expected 40 \(found in the toy set\), got 41',
  ):
    config_lib.from_data(config, {'num_train': 40}, where='the toy set')
  with pytest.raises(ValueError, match=r"^found: .*got 'num_classes'"):
    config_lib.from_data(config, {'num_classes': 3}, where='the toy set')


def _sized_task(config, process_index, process_count):
  task = common.build_toy_task(config, process_index, process_count)
  used = config_lib.from_data(config, {'num_train': 192}, where='toy arrays')
  return task._replace(config=used)


def test_train_follows_the_size_the_task_counted(tmp_path, capsys):
  workdir = str(tmp_path / 'w')
  result = loop.train(_sized_config(batch_size=32), _sized_task, workdir)
  assert sorted(result['losses']) == list(range(1, 7))  # 1 x 192 // 32
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert (saved['num_train'], saved['total_steps']) == (192, 6)
  assert (
    'Training data: num_train=192 (counted in the data); total_steps=6 = '
    'epochs 1 x num_train 192 // batch_size 32.'
  ) in capsys.readouterr().out


def test_train_refuses_a_task_config_that_changes_a_set_field(tmp_path):
  def changes_batch(config, process_index, process_count):
    task = _sized_task(config, process_index, process_count)
    used = task.config
    used.batch_size = 8
    return task._replace(config=used)

  with pytest.raises(ValueError, match=r"^task.config: .*\['batch_size'\]"):
    loop.train(_sized_config(), changes_batch, str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='^total_steps: expected .*got None'):
    loop.train(_sized_config(), common.build_toy_task, str(tmp_path / 'b'))
  assert not os.path.exists(tmp_path / 'a') and not os.path.exists(
    tmp_path / 'b'
  )


def test_variant_returns_a_listed_variant_and_names_the_choices():
  assert config_lib.variant('debug', ('', 'debug'), what='x') == 'debug'
  assert config_lib.variant('', ('', 'debug'), what='x') == ''
  with pytest.raises(
    ValueError,
    match=r"config: expected a variant of x among \['', 'debug'\], got 'dbg'",
  ):
    config_lib.variant('dbg', ('', 'debug'), what='x')


def test_variants_split_check_and_keep_one_of_each_group():
  choices = ('a', 'b', 'debug', 'local')
  kw = dict(what='x', exclusive=(('a', 'b'), ('debug', 'local')))
  assert config_lib.variants('', choices, **kw) == []
  assert config_lib.variants('b,debug', choices, **kw) == ['b', 'debug']
  with pytest.raises(ValueError, match=r"variants of x among .*got 'b,c'"):
    config_lib.variants('b,c', choices, **kw)
  with pytest.raises(
    ValueError, match=r"at most one of \['a', 'b'\] .* of x, got 'a,b'"
  ):
    config_lib.variants('a,b', choices, **kw)


def test_quick_test_turns_the_displays_off_and_logs_every_step():
  c = config_lib.base_config()
  assert c.progress_bar and c.tensorboard and c.plot_curves
  config_lib.quick_test(c)
  assert (c.log_every, c.progress_bar, c.tensorboard, c.plot_curves) == (
    1,
    False,
    False,
    False,
  )
  config_lib.quick_test(c, log_every=2)
  assert c.log_every == 2
