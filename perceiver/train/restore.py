"""Use a trained model: the model, parameters and config of a workdir.

A training run (`python -m experiments.main --config=FILE[:variant]
--workdir=DIR`, or `loop.train`) leaves in DIR the effective config
(`config.json`), the experiment file that made it (`experiment.json`, see
`experiment_record`) and orbax checkpoints. `restore` turns them back into
what prediction needs, without the optimizer, the schedule or the data:

  model = restore.restore('runs/digits')  # or restore(DIR, 'FILE.py')
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
import inspect
import json
import os
import types
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import haiku as hk
import jax
import ml_collections

from perceiver import checkpoints
from perceiver.train import checkpoint as checkpoint_lib

Experiment = Union[str, types.ModuleType]

# Next to config.json: {"file": absolute path, "module": dotted name or null,
# "variant": the --config variant or null}.
EXPERIMENT_JSON = 'experiment.json'
_EXPERIMENTS_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  'experiments',
)


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
    if os.path.dirname(path) == _EXPERIMENTS_DIR:
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


def experiment_record(
  experiment: Optional[str] = None, build_task: Any = None
) -> Optional[Dict[str, Optional[str]]]:
  """What `experiment.json` records of the experiment that made a run.

  Args:
    experiment: the `--config` value, 'FILE[:variant]'.
    build_task: without `experiment`, the run's `build_task`: a function
      named `build_task` in a module file (not `__main__`, not a lambda)
      names that file, with no variant.

  Returns:
    {'file': absolute path, 'module': 'experiments.<name>' for a file of
    this repository's `experiments/` (importable where the repository has
    moved) else None, 'variant': the variant or None}; None when
    `build_task` names no file.
  """
  variant = None
  if experiment is not None:
    path, _, variant = experiment.partition(':')
    path = os.path.abspath(path)
  elif (
    getattr(build_task, '__name__', None) == 'build_task'
    and getattr(build_task, '__module__', '__main__') != '__main__'
  ):
    try:
      path = os.path.abspath(inspect.getsourcefile(build_task))
    except TypeError:
      return None
  else:
    return None
  module = None
  if os.path.dirname(path) == _EXPERIMENTS_DIR:
    module = 'experiments.' + os.path.splitext(os.path.basename(path))[0]
  return {'file': path, 'module': module, 'variant': variant or None}


def recorded_experiment(workdir: str) -> Dict[str, Optional[str]]:
  """The `experiment.json` of `workdir` (see `experiment_record`).

  Raises:
    ValueError: there is none, naming `experiment`.
  """
  path = os.path.join(workdir, EXPERIMENT_JSON)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    raise ValueError(
      f'experiment: {workdir!r} does not record the experiment file that '
      f'trained it (no readable {EXPERIMENT_JSON}); pass it, e.g. '
      f"restore(workdir, 'experiments/digits.py')."
    ) from None


def _recorded_module(workdir: str) -> Tuple[types.ModuleType, Optional[str]]:
  """(module, variant) of the experiment `workdir` records."""
  record = recorded_experiment(workdir)
  path, module = record.get('file'), record.get('module')
  if path and os.path.isfile(path):
    return load_experiment(path), record.get('variant')
  if module:
    try:
      return importlib.import_module(module), record.get('variant')
    except ImportError:
      pass
  raise ValueError(
    f'experiment: {workdir!r} was trained by {path or module!r}, which is '
    'not there any more; pass the experiment file, e.g. restore(workdir, '
    "'experiments/digits.py')."
  )


def _like(value: Any, default: Any) -> Any:
  """A JSON value with the container types of the config's default."""
  if isinstance(value, dict) and isinstance(default, dict):
    return {k: _like(v, default.get(k)) for k, v in value.items()}
  if isinstance(value, list) and isinstance(default, tuple):
    return tuple(value)
  return value


def _with_missing(value: Any, main: Any) -> Any:
  """`value` plus the fields of `main` it lacks (recursively)."""
  if not (isinstance(value, dict) and isinstance(main, dict)):
    return value
  out = {k: v for k, v in main.items() if k not in value}
  out.update({k: _with_missing(v, main.get(k)) for k, v in value.items()})
  return out


def load_config(
  workdir: str,
  experiment: Optional[types.ModuleType] = None,
  variant: Optional[str] = None,
) -> ml_collections.ConfigDict:
  """The config a run in `workdir` recorded (`config.json`), locked.

  JSON has no tuples: where the experiment's config
  (`experiment.get_config(variant)`) holds a tuple, the list read back
  becomes a tuple again. A field the experiment gained after the run (not
  in `config.json`) takes its value in the experiment's main config
  (`get_config('')`), where new fields keep the earlier behaviour (e.g.
  `model.audio_gain` = 1 for runs made before it existed).
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

    def config_or_empty(arg):
      try:
        return experiment.get_config(arg).to_dict()
      except Exception:  # pylint: disable=broad-except
        return {}  # A variant-only experiment: nothing to take from it.

    main = config_or_empty('')
    default = config_or_empty(variant) if variant else main
    values = _like(_with_missing(values, main), default)
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
      the run records it (`experiment.json`, written by `experiments.main`
      and by `loop.train` given an experiment's `build_task`).

  Returns:
    A `Restored` (forward, params, state, config) with `predict(batch)`.

  Raises:
    ValueError: no config.json or checkpoint in `workdir`, or no experiment
      given or recorded (naming `experiment`).
  """
  variant = None
  if experiment is None:
    module, variant = _recorded_module(workdir)
  else:
    module = load_experiment(experiment)
  config = load_config(workdir, module, variant)
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
