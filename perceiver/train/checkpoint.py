"""Orbax checkpoints of the train state and the data iterator position.

A checkpoint is a directory `<workdir>/checkpoints/<step>/` with two items:
'state' (the `TrainState` pytree, every array with its sharding) and 'data'
(the training data iterator's state, one JSON file per process,
`process_<i>-of-<P>.json` as grain's handler named them, and
`topology.json`, the processes and devices that wrote it). Orbax writes each
one into a temporary directory and renames it only once complete, so a
process killed in the middle of a save leaves no half-written checkpoint
where a restore looks; the temporary leftovers are removed on the next
start.

Elastic resume. A run continues on another topology: the train state is
restored into the new shardings, and the data position is the step (see
`data.py`): each process of the same count gets its own file (any loader
worker count), and with another process count every process is given all
of the files (`set_states` of the iterator). `check_topology` refuses, in
one line naming both topologies, devices that cannot split the global
batches.

`restore_latest` tries the newest checkpoint first; if it cannot be read
(damaged files), it says so on the log and falls back to the previous one.
A data position of other data (`data.ResumeError`) is not damage: it is
raised at once.
"""

import dataclasses
import json
import os
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from perceiver.train import data as data_lib

TOPOLOGY_JSON = 'topology.json'
_STATE_FILE = re.compile(r'process_(\d+)-of-(\d+)\.json')


def _state_file(index: int, count: int) -> str:
  return f'process_{index}-of-{count}.json'


def _topology(topology: Dict[str, Any]) -> str:
  devices = topology.get('device_count')
  return f'{topology["process_count"]} process(es) x ' + (
    f'{devices} device(s)' if devices else 'unrecorded devices'
  )


def _saved_states(directory: epath.Path) -> List[epath.Path]:
  """The state files of every process of a data item, in process order.

  Raises:
    ValueError: the files are not those of one run (0..P-1 of P).
  """
  found = {}
  for path in directory.iterdir():
    match = _STATE_FILE.fullmatch(path.name)
    if match:
      found[int(match[1]), int(match[2])] = path
  counts = {count for _, count in found}
  if len(counts) != 1 or sorted(found) != [
    (i, max(counts)) for i in range(max(counts))
  ]:
    raise ValueError(
      f'{directory}: expected the data states of every process of one run, '
      f'got {sorted(p.name for p in found.values())}.'
    )
  return [found[key] for key in sorted(found)]


class _DataHandler(ocp.CheckpointHandler):
  """The 'data' item: the iterator state of every process (see above)."""

  def save(self, directory: epath.Path, args: 'DataSave') -> None:
    index, count = jax.process_index(), jax.process_count()
    state = args.item.get_state().decode()
    (directory / _state_file(index, count)).write_text(state)
    if index == 0:
      (directory / TOPOLOGY_JSON).write_text(json.dumps(args.topology))

  def restore(self, directory: epath.Path, args: 'DataRestore') -> Any:
    item = args.item
    index, count = jax.process_index(), jax.process_count()
    own = directory / _state_file(index, count)
    if own.exists():
      item.set_state(own.read_text().encode())
    else:
      paths = _saved_states(directory)
      if not hasattr(item, 'set_states'):
        raise data_lib.ResumeError(
          f'data: the checkpoint was written by {len(paths)} process(es), '
          f'this run has {count}; the training data '
          f'({type(item).__name__}) continues only on as many processes '
          '(it has no set_states).'
        )
      item.set_states([path.read_text().encode() for path in paths])
    item.start_prefetch()
    return item

  def metadata(self, directory: epath.Path) -> None:
    del directory


@ocp.args.register_with_handler(_DataHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  """Saves the iterator `item`'s state; `topology` is what wrote it."""

  item: Any
  topology: Dict[str, int]


@ocp.args.register_with_handler(_DataHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  """Sets the iterator `item`'s state from the checkpoint, in place."""

  item: Any


class Checkpointer:
  """Periodic checkpoints in `directory`, keeping the last `max_to_keep`."""

  def __init__(
    self, directory: str, *, max_to_keep: int = 3, async_save: bool = False
  ):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=True,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=('state', 'data')
    )

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(
    self, step: int, train_state: Any, data: Any, force: bool = False
  ) -> bool:
    """Saves `train_state` and the state of the iterator `data` as `step`.

    Args:
      step: the checkpoint's step.
      train_state: the `TrainState` (global arrays).
      data: the training iterator (see `task.DataIterator`); its
        `get_state()` is taken now.
      force: save even if the manager's policy would not.

    Returns:
      Whether a checkpoint was started.
    """
    devices = set()
    for leaf in jax.tree.leaves(train_state):
      devices |= leaf.sharding.device_set
    topology = {
      'process_count': jax.process_count(),
      'device_count': len(devices),
    }
    return self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_as_tree(train_state)),
        data=DataSave(data, topology),
      ),
      force=force,
    )

  def restore(self, step: int, abstract_state: Any, data: Any = None) -> Any:
    """Restores checkpoint `step` into the structure/shardings of the target.

    Args:
      step: which checkpoint.
      abstract_state: a `TrainState` of `jax.ShapeDtypeStruct`s carrying the
        target shardings (see `jax.eval_shape`).
      data: the training iterator, whose state is set from the checkpoint
        (in place); None to restore the train state only.

    Returns:
      The train state.
    """
    args = {'state': ocp.args.StandardRestore(_as_tree(abstract_state))}
    if data is not None:
      args['data'] = DataRestore(data)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return type(abstract_state)(**restored['state'])

  def restore_latest(
    self, abstract_state: Any, data: Any
  ) -> Optional[Tuple[int, Any]]:
    """The newest readable checkpoint as (step, train_state); sets `data`.

    Returns None when there is no checkpoint at all. A checkpoint that
    fails to load is reported and the previous one is tried; if none loads,
    raises `RuntimeError` rather than silently starting from scratch. A
    `data.ResumeError` (a data position of other data) is raised at once.
    """
    steps = self.all_steps()
    if not steps:
      return None
    errors = []
    for step in reversed(steps):
      try:
        state = self.restore(step, abstract_state, data)
      except data_lib.ResumeError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        message = (
          f'Checkpoint at step {step} in {self.directory} could not be '
          f'read (damaged, or written for another model) and was skipped: '
          f'{type(e).__name__}: {e}'
        )
        logging.warning(message)
        if jax.process_index() == 0:
          print(f'WARNING: {message}', flush=True)
        errors.append(message)
        continue
      if step != steps[-1]:
        self._set_aside([s for s in steps if s > step])
      return step, state
    raise RuntimeError(
      'No checkpoint in '
      + self.directory
      + ' could be restored:\n'
      + '\n'.join(errors)
    )

  def _set_aside(self, steps) -> None:
    """Moves damaged checkpoints to `<directory>_damaged/` (kept to inspect).

    Otherwise the resumed run could not write its own checkpoint at that
    step, and a later restart would trip over them again.
    """
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      aside = self.directory + '_damaged'
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, f'{step}.{time.time_ns()}')
        os.replace(os.path.join(self.directory, str(step)), target)
        print(
          f'WARNING: moved the damaged checkpoint {step} to {target}.',
          flush=True,
        )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices('perceiver_checkpoint_set_aside')
    self._manager.reload()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _as_tree(train_state: Any) -> dict:
  """A NamedTuple train state as a plain dict (what orbax stores)."""
  return dict(train_state._asdict())


def flat_shapes(tree: Any) -> dict:
  """{"['module']['w']": shape tuple} of a tree of arrays or array specs."""
  return {
    jax.tree_util.keystr(path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def stored_shapes(directory: str) -> Optional[Tuple[int, dict]]:
  """The shapes of the newest checkpoint in `directory` whose metadata reads.

  Reads only orbax's metadata (no array), so a config can be compared with
  the checkpoints of a workdir before anything is restored or written.

  Returns:
    (step, {'params': {path: shape}, 'state': {path: shape}}) for the
    model's parameters and state (paths as `flat_shapes` writes them), or None if `directory` holds no readable
    checkpoint.
  """
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    return None
  for step in sorted(ocp.utils.checkpoint_steps(directory), reverse=True):
    state_dir = epath.Path(directory) / str(step) / 'state'
    handler = ocp.PyTreeCheckpointHandler()
    try:
      tree = handler.metadata(state_dir).tree
      shapes = {k: flat_shapes(tree[k]) for k in ('params', 'state')}
    except Exception:  # pylint: disable=broad-except
      continue  # Damaged: restore_latest reports it and falls back.
    finally:
      handler.close()
    return step, shapes
  return None


def stored_topology(directory: str) -> Optional[Tuple[int, Dict[str, Any]]]:
  """The topology that wrote the newest checkpoint in `directory`.

  Returns:
    (step, {'process_count': P, 'device_count': D}); D is None for a
    checkpoint written before it was recorded (P is then the number of its
    data state files). None if there is no checkpoint with a data item.
  """
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    return None
  for step in sorted(ocp.utils.checkpoint_steps(directory), reverse=True):
    data_dir = epath.Path(directory) / str(step) / 'data'
    try:
      return step, json.loads((data_dir / TOPOLOGY_JSON).read_text())
    except (OSError, ValueError):
      pass
    try:
      paths = _saved_states(data_dir)
    except (OSError, ValueError):
      continue  # Damaged: restore_latest reports it and falls back.
    return step, {'process_count': len(paths), 'device_count': None}
  return None


def check_topology(
  directory: str, config: Any, *, device_count: int, process_count: int
) -> None:
  """Refuses a resume on a topology that cannot split the global batches.

  A run continues on any processes and devices (see the module docstring)
  whose counts divide its global batches: `config.batch_size` (by the
  process count), `config.batch_size / config.accumulation_steps` and
  `config.eval_batch_size` (by the device count). Fields that are not
  positive integers are left to `config.validate`.

  Raises:
    ValueError: the newest checkpoint in `directory` was written by another
      topology and this one does not divide the batches; one line naming
      both topologies.
  """
  stored = stored_topology(directory)
  sizes = (config.batch_size, config.accumulation_steps, config.eval_batch_size)
  if stored is None or not all(
    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes
  ):
    return
  step, old = stored
  new = {'process_count': process_count, 'device_count': device_count}
  batch, micro_steps, eval_batch = sizes
  if old == new or (
    batch % process_count == 0
    and (batch // micro_steps) % device_count == 0
    and eval_batch % device_count == 0
  ):
    return
  raise ValueError(
    f'workdir: the checkpoint at step {step} in {directory} was written by '
    f'{_topology(old)}; this run has {_topology(new)}, which does not '
    f'divide its global batches (batch_size {batch} / accumulation_steps '
    f'{micro_steps} per update, eval_batch_size {eval_batch}); resume on a '
    'topology that divides them.'
  )


def load_variables(path: str, *, arg_name: str = 'path') -> Tuple[Any, Any]:
  """The parameters and model state of an engine checkpoint, on the host.

  For warm starts (`Task.init_params`): reads only the 'params' and 'state'
  items of the train state (not the optimizer state or the data position).

  Args:
    path: a workdir (its newest complete checkpoint), its `checkpoints/`
      folder, or one step folder `checkpoints/<step>`; relative or absolute.
    arg_name: the config field named in errors.

  Returns:
    (params, state): numpy trees ({module: {name: np.ndarray}} for Haiku).

  Raises:
    ValueError: `path` holds no complete checkpoint.
  """
  path = os.path.abspath(path)  # orbax (tensorstore) needs absolute paths
  if os.path.isdir(os.path.join(path, 'state')):
    step_dir = path
  else:
    root = path
    if os.path.isdir(os.path.join(path, 'checkpoints')):
      root = os.path.join(path, 'checkpoints')
    steps = ocp.utils.checkpoint_steps(root) if os.path.isdir(root) else []
    if not steps:
      raise ValueError(
        f'{arg_name}: expected a workdir or a checkpoint directory of the '
        f'engine, got {path!r} (no complete checkpoint inside).'
      )
    step_dir = os.path.join(root, str(max(steps)))
  state_dir = epath.Path(step_dir) / 'state'
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(state_dir).tree
    target = {
      k: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata[k]
      )
      for k in ('params', 'state')
    }
    restored = handler.restore(
      state_dir,
      args=ocp.args.PyTreeRestore(
        target,
        restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target
        ),
        partial_restore=True,
      ),
    )
  finally:
    handler.close()
  return restored['params'], restored['state']
