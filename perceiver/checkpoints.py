"""Checkpoints: DeepMind's released pickles, and this library's own format.

Released checkpoints are Python pickles (a dict of parameters, or
`{'params': ..., 'state': ...}`). Unpickling can execute arbitrary code, so
`load_official` uses a restricted unpickler that rebuilds only plain
containers and numpy arrays and refuses everything else. Pickles of JAX
arrays (e.g. `pickle.dump(params)` straight after `init`) load too: a JAX
array pickles as its numpy value plus a call to JAX's
`_reconstruct_array`, which is replaced here by a function that only
rebuilds that numpy value. Load files you trust, and note that even this cannot make a malicious pickle harmless to
numpy's own reconstruction. The loaded tree is checked name by name and shape
by shape against `presets.build(name)` before it is returned.

This library's own checkpoints (`save` / `load`) are `.npz` files read with
`allow_pickle=False`: loading them never executes code.
"""

import io
import os
import pickle
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy._core import multiarray as _multiarray

from perceiver import presets

Params = Mapping[str, Mapping[str, Any]]

_SEP = '//'


class CheckpointError(ValueError):
  """A checkpoint file that is missing, damaged or does not fit the model."""


def _as_dict(*args):
  """Rebuilds an old Haiku mapping type (FlatMap, frozendict) as a dict."""
  for arg in args:
    if isinstance(arg, Mapping):
      return dict(arg)
  raise pickle.UnpicklingError('unsupported Haiku mapping payload')


def _numpy_of_jax_array(fun, args, arr_state, aval_state):
  """Stands in for `jax._src.array._reconstruct_array`: the numpy value only.

  `fun` and `args` were themselves resolved by the restricted unpickler
  (numpy's own array reconstruction), so nothing else can be called here.
  """
  del aval_state  # Only the weak-type flag; the dtype is the array's.
  value = fun(*args)
  if not isinstance(value, np.ndarray):
    raise pickle.UnpicklingError(
      f'a pickled JAX array must hold a numpy array, got {type(value).__name__}'
    )
  value.__setstate__(arr_state)
  return value


_ALLOWED = {
  ('numpy', 'ndarray'): np.ndarray,
  ('numpy', 'dtype'): np.dtype,
  ('numpy.core.multiarray', '_reconstruct'): _multiarray._reconstruct,  # pylint: disable=protected-access
  ('numpy._core.multiarray', '_reconstruct'): _multiarray._reconstruct,  # pylint: disable=protected-access
  ('numpy.core.multiarray', 'scalar'): _multiarray.scalar,
  ('numpy._core.multiarray', 'scalar'): _multiarray.scalar,
  ('collections', 'OrderedDict'): dict,
  ('haiku._src.data_structures', 'FlatMap'): _as_dict,
  ('haiku._src.data_structures', 'FlatMapping'): _as_dict,
  ('haiku._src.data_structures', 'frozendict'): _as_dict,
  ('jax._src.array', '_reconstruct_array'): _numpy_of_jax_array,
}


class _RestrictedUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
        f'refusing to load {module}.{name}: a checkpoint may only hold '
        'dicts and numpy or JAX arrays (convert other objects first, '
        'e.g. `jax.device_get(params)`, or save with '
        '`perceiver.checkpoints.save`)'
      ) from None


def _read_pickle(path: str):
  if not os.path.isfile(path):
    raise CheckpointError(f'path: no checkpoint file at {path!r}.')
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return _RestrictedUnpickler(io.BytesIO(data)).load()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
      f'path: {path!r} is not a readable checkpoint pickle ({e}).'
    ) from e


def _to_plain(tree) -> Dict[str, Dict[str, Any]]:
  if not isinstance(tree, Mapping):
    raise CheckpointError(
      f'expected a mapping of module name to parameters, '
      f'got {type(tree).__name__}.'
    )
  out = {}
  for module, values in tree.items():
    if not isinstance(values, Mapping):
      raise CheckpointError(
        f'module {module!r}: expected a mapping of '
        f'parameter name to array, got '
        f'{type(values).__name__}.'
      )
    out[module] = {k: np.asarray(v) for k, v in values.items()}
  return out


def compare_trees(expected, found, what: str = 'params') -> list:
  """Lines describing missing, extra and mis-shaped entries (empty if equal)."""
  problems = []
  for module in sorted(set(expected) | set(found)):
    exp, got = expected.get(module, {}), found.get(module, {})
    for name in sorted(set(exp) | set(got)):
      key = f'{what}[{module!r}][{name!r}]'
      if name not in got:
        problems.append(
          f'missing {key}: expected shape {tuple(exp[name].shape)}'
        )
      elif name not in exp:
        problems.append(f'extra {key} of shape {tuple(got[name].shape)}')
      elif tuple(exp[name].shape) != tuple(got[name].shape):
        problems.append(
          f'mis-shaped {key}: expected '
          f'{tuple(exp[name].shape)}, got '
          f'{tuple(got[name].shape)}'
        )
      elif not np.can_cast(
        got[name].dtype, exp[name].dtype, casting='same_kind'
      ):
        problems.append(
          f'wrong dtype {key}: expected {exp[name].dtype}, got '
          f'{got[name].dtype}'
        )
  return problems


def _expected(name: str, **overrides):
  model = presets.build(name, **overrides)
  args = presets.example_inputs(name, batch=1, **overrides)
  return jax.eval_shape(
    lambda *a: model.init(jax.random.PRNGKey(0), *a, is_training=True), *args
  )


def _check_and_convert(name, params, state, source: str, **overrides):
  exp_params, exp_state = _expected(name, **overrides)
  problems = compare_trees(exp_params, params, 'params') + compare_trees(
    exp_state, state, 'state'
  )
  if problems:
    listing = '\n  '.join(problems[:50])
    more = (
      f'\n  ... and {len(problems) - 50} more' if len(problems) > 50 else ''
    )
    raise CheckpointError(
      f'{source} does not fit preset {name!r} ({len(problems)} problems):'
      f'\n  {listing}{more}'
    )
  cast = lambda exp, got: jnp.asarray(got, dtype=exp.dtype)
  return (
    jax.tree.map(cast, exp_params, params),
    jax.tree.map(cast, exp_state, state),
  )


def load_official(path: str, name: str, **overrides) -> Tuple[Params, Params]:
  """Loads a released checkpoint for `presets.build(name)`.

  Args:
    path: a released file (e.g. language_perceiver_io_bytes.pickle or
      imagenet_fourier_position_encoding.pystate).
    name: one of `presets.PRESETS`.
    **overrides: size overrides the checkpoint was made with (normally none).

  Returns:
    (params, state) ready for `presets.build(name).apply`.

  Raises:
    CheckpointError: unreadable file, or a tree that does not fit the model
      (every missing, extra or mis-shaped entry is listed).
  """
  presets.defaults(name)  # Validates the name.
  obj = _read_pickle(path)
  if isinstance(obj, Mapping) and set(obj) == {'params', 'state'}:
    params, state = obj['params'], obj['state']
  else:
    params, state = obj, {}
  params, state = _to_plain(params), _to_plain(state or {})
  return _check_and_convert(
    name, params, state, f'checkpoint {path!r}', **overrides
  )


def save(path: str, params: Params, state: Params = None) -> None:
  """Saves (params, state) to an .npz file that loads without pickle."""
  arrays = {}
  for kind, tree in (('params', params), ('state', state or {})):
    for module, values in tree.items():
      for name, value in values.items():
        arrays[_SEP.join((kind, module, name))] = np.asarray(value)
  tmp = f'{path}.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load(path: str, name: str = None, **overrides) -> Tuple[Params, Params]:
  """Loads an .npz written by `save`; checks it against preset `name` if given."""
  if not os.path.isfile(path):
    raise CheckpointError(f'path: no checkpoint file at {path!r}.')
  trees = {'params': {}, 'state': {}}
  try:
    with np.load(path, allow_pickle=False) as data:
      for key in data.files:
        parts = key.split(_SEP)
        if len(parts) != 3 or parts[0] not in trees:
          raise CheckpointError(f'path: unexpected entry {key!r} in {path!r}.')
        trees[parts[0]].setdefault(parts[1], {})[parts[2]] = data[key]
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
      f'path: {path!r} is not a readable .npz checkpoint ({e}).'
    ) from e
  if name is None:
    to_jnp = lambda t: jax.tree.map(jnp.asarray, t)
    return to_jnp(trees['params']), to_jnp(trees['state'])
  return _check_and_convert(
    name, trees['params'], trees['state'], f'checkpoint {path!r}', **overrides
  )
