"""Use a trained model: the model, parameters and config of a workdir.

A training run (`python -m experiments.main --config=FILE[:variant]
--workdir=DIR`, or `loop.train`) leaves in DIR the effective config
(`config.json`) and orbax checkpoints. `restore` turns them back into what
prediction needs, without the optimizer, the schedule or the data:

  model = restore.restore('runs/digits', 'experiments/digits.py')
  logits = model.predict({'image': images})  # jitted, is_training=False
  forward, params, state, config = model     # or the pieces

`export` writes a workdir's parameters to this library's `.npz` format
(`perceiver.checkpoints.save`), which loads without pickle
(`perceiver.checkpoints.load`) and warm-starts experiments
(`--config.init_checkpoint=FILE.npz`).

The model comes from the experiment file that trained it: its
`build_forward(config)` when it has one, else the `forward` of its
`build_task(config, 0, 1)` (which also opens the experiment's data, so the
data must be where the config says).
"""

import functools
import importlib
import importlib.util
import json
import os
import types
from typing import Any, NamedTuple, Optional, Union

import haiku as hk
import jax
import ml_collections

from perceiver import checkpoints
from perceiver.train import checkpoint as checkpoint_lib

Experiment = Union[str, types.ModuleType]


class Restored(NamedTuple):
  """A trained model; unpacks as `forward, params, state, config`.

  Attributes:
    forward: the experiment's `hk.TransformedWithState`, called as
      `forward.apply(params, state, rng, batch, is_training=False)`.
    params: the trained parameters (numpy arrays, {module: {name: array}}).
    state: the model state (e.g. BatchNorm statistics), same layout.
    config: the run's config, read from `<workdir>/config.json`.
  """

  forward: hk.TransformedWithState
  params: Any
  state: Any
  config: ml_collections.ConfigDict

  def predict(self, batch: Any) -> Any:
    """The model's outputs for `batch` (jitted; no dropout, no rng)."""
    outputs, _ = _jitted_apply(self.forward)(self.params, self.state, batch)
    return outputs


@functools.lru_cache(maxsize=8)
def _jitted_apply(forward: hk.TransformedWithState):
  return jax.jit(
    lambda params, state, batch: forward.apply(
      params, state, None, batch, is_training=False
    )
  )


def load_experiment(experiment: Experiment) -> types.ModuleType:
  """The experiment module: a module, a file path or a dotted module name.

  Args:
    experiment: a module; a path such as 'experiments/digits.py' (a variant
      suffix ':debug' is ignored here); or a module name such as
      'experiments.digits'.

  Raises:
    ValueError: the file does not exist or the module has no
      `build_forward` / `build_task`.
  """
  if isinstance(experiment, types.ModuleType):
    module = experiment
  elif isinstance(experiment, str) and experiment.split(':')[0].endswith('.py'):
    path = os.path.abspath(experiment.split(':')[0])
    if not os.path.isfile(path):
      raise ValueError(
        f'experiment: expected an experiment file, got {experiment!r}.'
      )
    name = os.path.splitext(os.path.basename(path))[0]
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    experiments_dir = os.path.join(os.path.dirname(package), 'experiments')
    if os.path.dirname(path) == experiments_dir:
      module = importlib.import_module(f'experiments.{name}')
    else:
      spec = importlib.util.spec_from_file_location(f'experiment_{name}', path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
  elif isinstance(experiment, str):
    module = importlib.import_module(experiment)
  else:
    raise ValueError(
      'experiment: expected a module, a file path or a module name, got '
      f'{type(experiment).__name__}.'
    )
  if not hasattr(module, 'build_forward') and not hasattr(module, 'build_task'):
    raise ValueError(
      f'experiment: {module.__name__} has neither build_forward(config) '
      'nor build_task(config, process_index, process_count).'
    )
  return module


def _like(value: Any, default: Any) -> Any:
  """A JSON value with the container types of the config's default."""
  if isinstance(value, dict) and isinstance(default, dict):
    return {k: _like(v, default.get(k)) for k, v in value.items()}
  if isinstance(value, list) and isinstance(default, tuple):
    return tuple(value)
  return value


def load_config(
  workdir: str, experiment: Optional[types.ModuleType] = None
) -> ml_collections.ConfigDict:
  """The config a run in `workdir` recorded (`config.json`), locked.

  JSON has no tuples: where the experiment's default config
  (`experiment.get_config()`) holds a tuple, the list read back becomes a
  tuple again.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ValueError(
      f"workdir: expected a training run's directory with config.json, "
      f'got {workdir!r} (no {path}).'
    )
  with open(path) as f:
    values = json.load(f)
  if experiment is not None and hasattr(experiment, 'get_config'):
    try:
      default = experiment.get_config().to_dict()
    except Exception:  # pylint: disable=broad-except
      default = {}  # A variant-only experiment: keep the JSON types.
    values = _like(values, default)
  config = ml_collections.ConfigDict(values)
  config.lock()
  return config


def build_forward(
  experiment: types.ModuleType, config: ml_collections.ConfigDict
) -> hk.TransformedWithState:
  """The experiment's model for `config` (see the module docstring)."""
  if hasattr(experiment, 'build_forward'):
    return experiment.build_forward(config)
  return experiment.build_task(config, 0, 1).forward


def restore(workdir: str, experiment: Optional[Experiment] = None) -> Restored:
  """The trained model of `workdir`, from its newest complete checkpoint.

  Args:
    workdir: the run's directory (holds config.json and checkpoints/).
    experiment: the experiment file that trained it (a path such as
      'experiments/digits.py', a module name or the module). Optional when
      the run's config.json names it in an 'experiment' field.

  Returns:
    A `Restored` (forward, params, state, config) with `predict(batch)`.

  Raises:
    ValueError: no config.json or checkpoint in `workdir`, or no experiment
      given or recorded.
  """
  if experiment is None:
    path = os.path.join(workdir, 'config.json')
    recorded = None
    if os.path.isfile(path):
      with open(path) as f:
        recorded = json.load(f).get('experiment')
    if not recorded:
      raise ValueError(
        f'experiment: {path} does not name the experiment file that '
        "trained it; pass it, e.g. restore(workdir, 'experiments/digits.py')."
      )
    experiment = recorded
  module = load_experiment(experiment)
  config = load_config(workdir, module)
  params, state = checkpoint_lib.load_variables(workdir, arg_name='workdir')
  return Restored(build_forward(module, config), params, state, config)


def export(workdir: str, path: str) -> str:
  """Writes the newest checkpoint's params and state of `workdir` to `path`.

  The file is this library's `.npz` (`perceiver.checkpoints.save`); the
  optimizer state and the data position are left out.

  Returns:
    `path`.
  """
  params, state = checkpoint_lib.load_variables(workdir, arg_name='workdir')
  checkpoints.save(path, params, state)
  return path
