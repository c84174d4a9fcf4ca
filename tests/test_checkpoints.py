"""Checkpoint loading: released pickle layouts, damaged files, own format."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import checkpoints
from perceiver import presets
from tests.test_presets import SMALL


def synthetic_tree(entry, seed=0):
  """Random arrays with the names/shapes/dtypes of a released checkpoint's tree
  (tests/data/released_checkpoints.json)."""
  rng = np.random.default_rng(seed)
  return {
    m: {
      n: rng.standard_normal(s['shape']).astype(s['dtype'])
      for n, s in d.items()
    }
    for m, d in entry.items()
  }


def test_loads_released_params_only_pickle(tmp_path, official):
  """language_mlm's file is a pickle of params (no state)."""
  params = synthetic_tree(official['language_mlm']['params'])
  path = tmp_path / 'language_perceiver_io_bytes.pickle'
  path.write_bytes(pickle.dumps(params))
  loaded, state = checkpoints.load_official(str(path), 'language_mlm')
  assert state == {}
  np.testing.assert_array_equal(
    loaded['embed']['embeddings'], params['embed']['embeddings']
  )
  assert loaded['embed']['embeddings'].dtype == jnp.float32


def test_loads_released_params_and_state_pickle(tmp_path, official):
  entry = official['imagenet_conv']
  obj = {
    'params': synthetic_tree(entry['params']),
    'state': synthetic_tree(entry['state']),
  }
  path = tmp_path / 'imagenet_conv_preprocessing.pystate'
  path.write_bytes(pickle.dumps(obj))
  params, state = checkpoints.load_official(str(path), 'imagenet_conv')
  key = 'image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/mean_ema'
  np.testing.assert_array_equal(
    state[key]['average'], obj['state'][key]['average']
  )
  assert state[key]['counter'].dtype == jnp.int32


def test_loaded_checkpoint_runs_in_the_small_preset(tmp_path):
  name = 'imagenet_learned'
  model = presets.build(name, **SMALL[name])
  args = presets.example_inputs(name, batch=1, **SMALL[name])
  params, state = jax.eval_shape(
    lambda *a: model.init(jax.random.PRNGKey(0), *a, is_training=True), *args
  )
  rng = np.random.default_rng(0)
  tree = {
    m: {
      n: rng.standard_normal(v.shape).astype(np.float32) for n, v in d.items()
    }
    for m, d in params.items()
  }
  path = tmp_path / 'ckpt.pickle'
  path.write_bytes(pickle.dumps({'params': tree, 'state': {}}))
  loaded, state = checkpoints.load_official(str(path), name, **SMALL[name])
  images = jnp.ones(args[0].shape)
  logits, _ = model.apply(loaded, state, None, images, is_training=False)
  assert logits.shape == (1, 10)


def test_wrong_file_lists_missing_extra_and_misshaped(tmp_path, official):
  params = synthetic_tree(official['imagenet_fourier']['params'])
  del params['perceiver_encoder/~/trainable_position_encoding']
  params['perceiver_encoder/~/cross_attention/layer_norm']['scale'] = np.zeros(
    [7], np.float32
  )
  params['bogus_module'] = {'w': np.zeros([2], np.float32)}
  path = tmp_path / 'bad.pystate'
  path.write_bytes(pickle.dumps({'params': params, 'state': {}}))
  with pytest.raises(checkpoints.CheckpointError) as err:
    checkpoints.load_official(str(path), 'imagenet_fourier')
  msg = str(err.value)
  assert (
    "missing params['perceiver_encoder/~/trainable_position_encoding']" in msg
  )
  assert (
    "mis-shaped params['perceiver_encoder/~/cross_attention/layer_norm']['scale']: expected (1024,), got (7,)"
    in msg
  )
  assert "extra params['bogus_module']['w']" in msg


def test_wrong_model_name_is_reported(tmp_path, official):
  params = synthetic_tree(official['optical_flow']['params'])
  path = tmp_path / 'flow.pystate'
  path.write_bytes(pickle.dumps({'params': params, 'state': {}}))
  with pytest.raises(checkpoints.CheckpointError, match='does not fit preset'):
    checkpoints.load_official(str(path), 'imagenet_fourier')


def test_damaged_and_missing_files(tmp_path):
  path = tmp_path / 'truncated.pickle'
  path.write_bytes(pickle.dumps({'a': {'w': np.zeros(3)}})[:-7])
  with pytest.raises(checkpoints.CheckpointError, match='not a readable'):
    checkpoints.load_official(str(path), 'language_mlm')
  with pytest.raises(checkpoints.CheckpointError, match='no checkpoint file'):
    checkpoints.load_official(str(tmp_path / 'nope.pickle'), 'language_mlm')


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


def test_pickle_with_code_is_refused(tmp_path):
  path = tmp_path / 'evil.pickle'
  path.write_bytes(pickle.dumps({'m': {'w': _Evil()}}))
  with pytest.raises(checkpoints.CheckpointError, match='refusing to load'):
    checkpoints.load_official(str(path), 'language_mlm')


def test_pickle_of_jax_arrays_from_init_loads(tmp_path):
  """Parameters pickled straight from `init` (JAX arrays, with state)."""
  name = 'imagenet_conv'
  model = presets.build(name, **SMALL[name])
  args = [
    jnp.zeros(a.shape, a.dtype)
    for a in presets.example_inputs(name, batch=1, **SMALL[name])
  ]
  params, state = model.init(jax.random.PRNGKey(0), *args, is_training=True)
  path = tmp_path / 'mine.pickle'
  path.write_bytes(pickle.dumps({'params': params, 'state': state}))
  loaded, loaded_state = checkpoints.load_official(
    str(path), name, **SMALL[name]
  )
  for got, want in ((loaded, params), (loaded_state, state)):
    jax.tree.map(np.testing.assert_array_equal, got, want)


class _EvilJaxArray:
  """A pickle that names JAX's array reconstruction but carries a command."""

  def __reduce__(self):
    from jax._src import array  # pylint: disable=g-import-not-at-top

    return (
      array._reconstruct_array,  # pylint: disable=protected-access
      (os.system, ('echo pwned',), None, {}),
    )


def test_jax_array_slot_cannot_call_code(tmp_path):
  path = tmp_path / 'evil_jax.pickle'
  path.write_bytes(pickle.dumps({'m': {'w': _EvilJaxArray()}}))
  with pytest.raises(checkpoints.CheckpointError, match='refusing to load'):
    checkpoints.load_official(str(path), 'language_mlm')


def test_own_format_round_trip_without_pickle(tmp_path):
  params = {
    'a/~/b': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)},
    'c': {'b': np.ones(3, np.float32)},
  }
  state = {'bn/~/mean_ema': {'counter': np.array(3, np.int32)}}
  path = str(tmp_path / 'ckpt.npz')
  checkpoints.save(path, params, state)
  p2, s2 = checkpoints.load(path)
  np.testing.assert_array_equal(p2['a/~/b']['w'], params['a/~/b']['w'])
  assert int(s2['bn/~/mean_ema']['counter']) == 3
  with np.load(path, allow_pickle=False) as data:
    assert all(data[k].dtype != object for k in data.files)


def test_own_format_checked_against_a_preset(tmp_path):
  name = 'language_mlm'
  model = presets.build(name, **SMALL[name])
  args = presets.example_inputs(name, **SMALL[name])
  params, _ = jax.eval_shape(
    lambda *a: model.init(jax.random.PRNGKey(0), *a, is_training=True), *args
  )
  tree = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
  path = str(tmp_path / 'mlm.npz')
  checkpoints.save(path, tree)
  loaded, _ = checkpoints.load(path, name, **SMALL[name])
  assert set(loaded) == set(params)
  del tree['embed']
  checkpoints.save(path, tree)
  with pytest.raises(
    checkpoints.CheckpointError, match="missing params\\['embed'\\]"
  ):
    checkpoints.load(path, name, **SMALL[name])
