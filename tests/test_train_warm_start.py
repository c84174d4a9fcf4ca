"""perceiver/train/warm_start.py: every checkpoint kind read, merged by name
and shape into hand-built trees, the must-load patterns, the hook's printed
line, and a toy run warm-started from another through the engine."""

import contextlib
import io
import os
import pickle

import jax
import numpy as np
import pytest

from perceiver import checkpoints
from perceiver import presets
from perceiver import train as train_lib
from perceiver.train import config as config_lib
from perceiver.train import warm_start
from tests import test_train_common as common

f32 = np.float32
# A language_mlm model small enough to build in a test (the released
# pickle's kind), at the MLM :debug sizes.
MLM_SIZES = presets.tiny(
  'language_mlm', d_model=16, num_z_channels=32, qk_channels=16, max_seq_len=64
)


def _config(path='', must_load=('.*',)):
  c = config_lib.base_config()
  c.init_checkpoint = path
  c.init_must_load = must_load
  return c


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  """A 2-step toy run with BatchNorm (params and state): (workdir, result)."""
  workdir = str(tmp_path_factory.mktemp('toy') / 'run')
  config = common.toy_config(total_steps=2, **{'model.batchnorm': True})
  with contextlib.redirect_stdout(io.StringIO()):
    result = train_lib.train(config, common.build_toy_task, workdir)
  return workdir, result


def test_merge_by_name_and_shape_in_the_fresh_dtypes():
  params = {
    'enc': {'w': np.zeros((2, 3), f32), 'b': np.zeros(3, f32)},
    'head': {'w': np.ones((3, 1), f32)},
  }
  loaded = {
    'enc': {'w': np.full((2, 3), 2.0), 'b': np.full(3, 3.0), 'x': np.ones(1)},
    'head': {'w': np.full((3, 2), 4.0)},  # another shape: kept fresh
    'old': {'q': np.ones(2)},
  }
  merged, fresh, unused = warm_start.merge(params, loaded, patterns=('enc',))
  np.testing.assert_array_equal(merged['enc']['w'], np.full((2, 3), 2.0))
  assert merged['enc']['w'].dtype == f32  # float64 in, the model's float32
  np.testing.assert_array_equal(merged['enc']['b'], np.full(3, 3.0))
  np.testing.assert_array_equal(merged['head']['w'], np.ones((3, 1)))
  assert fresh == ['head/w']
  assert unused == ['enc/x', 'old/q']
  # Every must-load leaf that does not fit is listed, with both shapes.
  del loaded['enc']['b']
  with pytest.raises(ValueError) as e:
    warm_start.merge(params, loaded, patterns=('.*',))
  assert str(e.value).startswith('init_checkpoint: 2 params leaves')
  assert 'params enc/b: expected shape [3], missing' in str(e.value)
  assert 'params head/w: expected shape [3, 1], got [3, 2]' in str(e.value)
  # Modules no pattern names may stay fresh.
  _, fresh, _ = warm_start.merge(params, loaded, patterns=('e', 'hea'))
  assert fresh == ['enc/b', 'head/w']


def test_must_load_matches_whole_module_names():
  patterns = ('embed', 'perceiver_encoder/.*')
  assert warm_start.must_load('embed', patterns)
  assert warm_start.must_load('perceiver_encoder/~/self_attention', patterns)
  assert not warm_start.must_load('embedding_decoder', patterns)
  assert not warm_start.must_load('basic_decoder/~/perceiver_encoder', patterns)
  assert warm_start.must_load('anything', ('.*',))
  assert not warm_start.must_load('anything', ())


def test_init_must_load_is_validated():
  for bad in (('(',), (3,)):
    config = _config(must_load=bad)
    with pytest.raises(ValueError, match='init_must_load: expected'):
      config_lib.validate(config, device_count=1)
  config_lib.validate(_config(must_load=('embed', 'a/.*')), device_count=1)


def test_the_hook_merges_params_and_state_and_says_so(tmp_path, capsys):
  assert warm_start.init_params_hook(_config()) is None
  params = {'lin': {'w': np.zeros((2, 2), f32)}, 'head': {'b': np.zeros(2)}}
  state = {'bn': {'mean': np.zeros(2, f32), 'var': np.ones(2, f32)}}
  saved_state = {'bn': {'mean': np.full(2, 5.0, f32)}, 'old': {'c': np.ones(1)}}
  path = str(tmp_path / 'ours.npz')
  checkpoints.save(path, {'lin': {'w': np.eye(2, dtype=f32)}}, saved_state)
  hook = warm_start.init_params_hook(_config(path, ('lin',)))
  got_params, got_state = hook(params, state)
  np.testing.assert_array_equal(got_params['lin']['w'], np.eye(2))
  np.testing.assert_array_equal(got_params['head']['b'], np.zeros(2))
  np.testing.assert_array_equal(got_state['bn']['mean'], np.full(2, 5.0))
  assert got_state['bn']['mean'].dtype == f32
  out = capsys.readouterr().out
  assert out == (
    f'Warm start from {path}: 1/2 parameters loaded; kept fresh: '
    "['head/b']; checkpoint entries not used: none. 1/2 state entries "
    "loaded; kept fresh: ['bn/var']; checkpoint entries not used: "
    "['old/c'].\n"
  )
  # 'bn' must load: its missing 'var' is an error naming the state leaf.
  with pytest.raises(ValueError, match=r'(?s)1 state leaves .*state bn/var'):
    warm_start.init_params_hook(_config(path, ('lin', 'bn')))(params, state)


def test_load_reads_an_npz(tmp_path):
  path = str(tmp_path / 'ours.npz')
  params = {'a': {'w': np.arange(6, dtype=f32).reshape(2, 3)}}
  state = {'s': {'n': np.int32(4)}}
  checkpoints.save(path, params, state)
  got_params, got_state = warm_start.load(path)
  np.testing.assert_array_equal(got_params['a']['w'], params['a']['w'])
  assert isinstance(got_params['a']['w'], np.ndarray)
  assert got_state == {'s': {'n': 4}}


@pytest.mark.parametrize('form', ['workdir', 'relative', 'checkpoints', 'step'])
def test_load_reads_an_engine_checkpoint(toy_run, form, monkeypatch):
  workdir, result = toy_run
  monkeypatch.chdir(os.path.dirname(workdir))
  path = {
    'workdir': workdir,
    'relative': os.path.basename(workdir),  # orbax needs absolute paths
    'checkpoints': os.path.join(workdir, 'checkpoints'),
    'step': os.path.join(workdir, 'checkpoints', '2'),
  }[form]
  params, state = warm_start.load(path)
  ts = jax.device_get(result['train_state'])
  assert set(state) == {'batchnorm/~/mean_ema', 'batchnorm/~/var_ema'}
  for got, want in ((params, ts.params), (state, ts.state)):
    assert jax.tree.structure(got) == jax.tree.structure(dict(want))
    jax.tree.map(np.testing.assert_array_equal, got, dict(want))


def test_load_reads_a_released_pickle_as_its_preset(tmp_path):
  model = presets.build('language_mlm', **MLM_SIZES)
  args = presets.example_inputs('language_mlm', batch=1, **MLM_SIZES)
  shapes, _ = jax.eval_shape(
    lambda *a: model.init(jax.random.PRNGKey(0), *a, is_training=True), *args
  )
  rng = np.random.default_rng(0)
  plain = {
    module: {
      name: rng.standard_normal(v.shape).astype(v.dtype)
      for name, v in values.items()
    }
    for module, values in shapes.items()
  }
  path = str(tmp_path / 'language_perceiver_io_bytes.pickle')
  with open(path, 'wb') as f:  # the released layout: a dict of numpy arrays
    pickle.dump(plain, f)
  got, state = warm_start.load(path, preset='language_mlm', **MLM_SIZES)
  jax.tree.map(np.testing.assert_array_equal, got, plain)
  assert state == {}
  # The preset's sizes are checked: another model size does not fit.
  with pytest.raises(checkpoints.CheckpointError, match='does not fit'):
    warm_start.load(path, preset='language_mlm', **dict(MLM_SIZES, d_model=32))
  # A model without a released checkpoint refuses pickles, at once.
  with pytest.raises(ValueError, match='no released checkpoint fits'):
    warm_start.init_params_hook(_config(path))


def test_load_says_what_it_cannot_read(tmp_path):
  with pytest.raises(ValueError, match=r'init_checkpoint: .*missing\.npz'):
    warm_start.load(str(tmp_path / 'missing.npz'))
  with pytest.raises(ValueError, match='init_checkpoint: .*no complete'):
    warm_start.load(str(tmp_path))
  other = tmp_path / 'weights.bin'
  other.write_bytes(b'')
  with pytest.raises(ValueError, match=r'init_checkpoint: expected .*bin'):
    warm_start.load(str(other), preset='language_mlm')


def test_a_toy_run_warm_starts_from_another(toy_run, tmp_path):
  # No update (learning rate 0): the second run ends with the first's
  # parameters and BatchNorm state (the state moves in training, so it is
  # compared after one step: the first run's own EMA update applied again).
  workdir, first = toy_run
  config = common.toy_config(
    total_steps=1,
    init_checkpoint=workdir,
    **{'model.batchnorm': True, 'optimizer.base_lr': 0.0},
  )
  config.optimizer.weight_decay = 0.0

  def build(config, process_index, process_count):
    task = common.build_toy_task(config, process_index, process_count)
    return task._replace(init_params=warm_start.init_params_hook(config))

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    second = train_lib.train(config, build, str(tmp_path / 'warm'))
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(second['train_state'].params),
    jax.device_get(first['train_state'].params),
  )
  assert f'Warm start from {workdir}: 7/7 parameters loaded' in out.getvalue()
  n = sum(len(v) for v in first['train_state'].state.values())
  assert f'{n}/{n} state entries loaded; kept fresh: none' in out.getvalue()
