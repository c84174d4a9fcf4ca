"""Orbax checkpoints of the train state and the data iterator position.

A checkpoint is a directory `<workdir>/checkpoints/<step>/` with two items:
'state' (the `TrainState` pytree, every array with its sharding) and 'data'
(the training data iterator's state, written by grain's orbax handler as one
JSON file per process, `process_<i>-of-<P>.json`: each process reads its own
rows, so a checkpoint resumes with the same process count). Orbax writes each one into
a temporary directory and renames it only once complete, so a process killed
in the middle of a save leaves no half-written checkpoint where a restore
looks; the temporary leftovers are removed on the next start.

`restore_latest` tries the newest checkpoint first; if it cannot be read
(damaged files), it says so on the log and falls back to the previous one.
"""

import os
import time
from typing import Any, Optional, Tuple

from absl import logging
from etils import epath
import jax
import grain
import numpy as np
import orbax.checkpoint as ocp


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
    return self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_as_tree(train_state)),
        data=grain.checkpoint.CheckpointSave(data),
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
      args['data'] = grain.checkpoint.CheckpointRestore(data)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return type(abstract_state)(**restored['state'])

  def restore_latest(
    self, abstract_state: Any, data: Any
  ) -> Optional[Tuple[int, Any]]:
    """The newest readable checkpoint as (step, train_state); sets `data`.

    Returns None when there is no checkpoint at all. A checkpoint that
    fails to load is reported and the previous one is tried; if none loads,
    raises `RuntimeError` rather than silently starting from scratch.
    """
    steps = self.all_steps()
    if not steps:
      return None
    errors = []
    for step in reversed(steps):
      try:
        state = self.restore(step, abstract_state, data)
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
