"""Warm starts: `config.init_checkpoint` read, merged and handed to the engine.

Every experiment warm-starts the same way: `init_params_hook(config, ...)`
is its `Task.init_params`. The hook reads `config.init_checkpoint` whatever
it is (`load`): a released pickle of DeepMind's (`.pickle`, `.pkl`,
`.pystate`; checked against the experiment's preset), an `.npz` of
`perceiver.checkpoints.save`, or an engine checkpoint (a workdir, its
`checkpoints/` folder or one step folder). It then copies every leaf of
the freshly initialised parameters and state that the checkpoint has under
the same module, name and shape (`merge`), cast to the model's dtype. The
modules whose name matches one of `config.init_must_load` (regular
expressions, whole-name matches) must load: a leaf of theirs missing or
mis-shaped is an error; the others may stay fresh. Fine-tuning a new head
on a pre-trained encoder (GLUE from the MLM, paper Sec. 4.1) sets it to the
encoder's modules; the default `('.*',)` makes every leaf load.
"""

import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence
from typing import Tuple

import jax
import numpy as np

from perceiver import checkpoints
from perceiver import validation
from perceiver.train import checkpoint as checkpoint_lib

Tree = Dict[str, Dict[str, Any]]
# Suffixes of the released pickles (read by `checkpoints.load_official`).
PICKLE_SUFFIXES = ('.pickle', '.pkl', '.pystate')
_ARG = 'init_checkpoint'
_KINDS = 'a workdir, a checkpoint directory or an .npz of this engine'


def must_load(module: str, patterns: Sequence[str]) -> bool:
  """Whether `module` (a Haiku module name) matches one of `patterns`.

  Args:
    module: e.g. 'perceiver_encoder/~/cross_attention/attention/linear'.
    patterns: regular expressions, each matched against the whole name.

  Returns:
    True when one pattern matches the whole of `module`.
  """
  return any(re.fullmatch(p, module) for p in patterns)


def load(
  path: str, *, preset: Optional[str] = None, **overrides
) -> Tuple[Tree, Tree]:
  """The (params, state) of a checkpoint of any kind, as host numpy trees.

  Args:
    path: a released pickle (`PICKLE_SUFFIXES`; read by
      `checkpoints.load_official(path, preset, **overrides)`, which checks
      every entry against the preset), an `.npz` of `checkpoints.save`, or
      an engine checkpoint directory (`checkpoint.load_variables`: a
      workdir, its `checkpoints/` folder or one `checkpoints/<step>`).
    preset: the `presets.PRESETS` name a released pickle is read as; None
      refuses pickles (a model without a released checkpoint).
    **overrides: the preset's sizes the pickle must fit.

  Returns:
    (params, state): {module: {name: np.ndarray}} each.

  Raises:
    ValueError: no such file or directory, a suffix of no known kind, a
      pickle without `preset`, a directory without an engine checkpoint.
    perceiver.checkpoints.CheckpointError: an unreadable file, or a pickle
      that does not fit the preset (every problem listed).
  """
  if os.path.isdir(path):
    params, state = checkpoint_lib.load_variables(path, arg_name=_ARG)
  elif not os.path.isfile(path):
    raise ValueError(
      f'{_ARG}: expected an existing file or directory ({_KINDS}, or a '
      f'released {"/".join(PICKLE_SUFFIXES)}), got {path!r}.'
    )
  elif path.endswith('.npz'):
    params, state = checkpoints.load(path)
  elif path.endswith(PICKLE_SUFFIXES) and preset is not None:
    params, state = checkpoints.load_official(path, preset, **overrides)
  else:
    raise ValueError(_kind_error(path, preset))
  as_numpy = lambda tree: {
    module: {name: np.asarray(v) for name, v in values.items()}
    for module, values in tree.items()
  }
  return as_numpy(params), as_numpy(state)


def _kind_error(path: str, preset: Optional[str]) -> str:
  """The message for a file `load` cannot read with `preset`."""
  if preset is None:
    return (
      f'{_ARG}: expected {_KINDS} (no released checkpoint fits this model), '
      f'got {path!r}.'
    )
  return (
    f'{_ARG}: expected {_KINDS} or a released '
    f'{"/".join(PICKLE_SUFFIXES)} file, got {path!r}.'
  )


def merge(
  fresh: Tree,
  loaded: Tree,
  *,
  patterns: Sequence[str],
  what: str = 'params',
) -> Tuple[Tree, List[str], List[str]]:
  """`fresh` with every leaf that `loaded` has under its name and shape.

  Args:
    fresh: the freshly initialised tree, {module: {name: array}}.
    loaded: a checkpoint's tree of the same kind (`load`).
    patterns: regular expressions over module names (`must_load`): a leaf
      of a matching module missing from `loaded`, or of another shape
      there, is an error.
    what: 'params' or 'state', named in the error.

  Returns:
    (merged tree, in `fresh`'s dtypes; 'module/name' of the leaves kept
    fresh; 'module/name' of `loaded`'s leaves not in `fresh`).

  Raises:
    ValueError: listing every must-load leaf that is missing or mis-shaped.
  """
  merged, kept, problems = {}, [], []
  for module, values in fresh.items():
    merged[module] = {}
    for name, value in values.items():
      src = loaded.get(module, {}).get(name)
      if src is not None and np.shape(src) == np.shape(value):
        merged[module][name] = np.asarray(src, np.asarray(value).dtype)
        continue
      merged[module][name] = value
      kept.append(f'{module}/{name}')
      if must_load(module, patterns):
        got = 'missing' if src is None else f'got {list(np.shape(src))}'
        problems.append(
          f'{what} {module}/{name}: expected shape '
          f'{list(np.shape(value))}, {got}'
        )
  if problems:
    listing = '\n  '.join(problems)
    raise ValueError(
      f'{_ARG}: {len(problems)} {what} leaves the model must load '
      f'(init_must_load={tuple(patterns)}) are missing from the checkpoint '
      f'or of another shape there:\n  {listing}'
    )
  unused = sorted(
    f'{m}/{n}'
    for m, vs in loaded.items()
    for n in vs
    if n not in fresh.get(m, {})
  )
  return merged, kept, unused


def init_params_hook(
  config: Any,
  *,
  preset: Optional[str] = None,
  overrides: Optional[Mapping[str, Any]] = None,
) -> Optional[Callable[[Tree, Tree], Tuple[Tree, Tree]]]:
  """`Task.init_params` warm-starting from `config.init_checkpoint`.

  The checkpoint is read when the engine calls the hook (on a fresh start
  only, never on a resume). Process 0 prints one line: how many leaves were
  loaded, which were kept fresh, which of the checkpoint's were not used.

  Args:
    config: an experiment config (`init_checkpoint`, `init_must_load`).
    preset: the preset a released pickle is read as (None: the model has
      no released checkpoint, and a pickle is refused here).
    overrides: that preset's sizes for this config.

  Returns:
    `(params, state) -> (params, state)` on host numpy trees, or None when
    `config.init_checkpoint` is ''.

  Raises:
    ValueError: a released pickle given with `preset` None; (when called)
      as `load` and `merge`.
  """
  path = config.init_checkpoint
  if not path:
    return None
  patterns = tuple(config.init_must_load)
  validation.check_regexes('init_must_load', patterns)
  if preset is None and path.endswith(PICKLE_SUFFIXES):
    raise ValueError(_kind_error(path, preset))
  overrides = dict(overrides or {})

  def init_params(params: Tree, state: Tree) -> Tuple[Tree, Tree]:
    loaded = load(path, preset=preset, **overrides)
    out, lines = [], []
    for what, fresh, got in zip(('params', 'state'), (params, state), loaded):
      merged, kept, unused = merge(fresh, got, patterns=patterns, what=what)
      out.append(merged)
      count = sum(len(v) for v in fresh.values())
      if what == 'params' or count or unused:
        noun = 'parameters' if what == 'params' else 'state entries'
        lines.append(
          f'{count - len(kept)}/{count} {noun} loaded; kept fresh: '
          f'{kept or "none"}; checkpoint entries not used: '
          f'{unused or "none"}.'
        )
    if jax.process_index() == 0:
      print(f'Warm start from {path}: {" ".join(lines)}', flush=True)
    return tuple(out)

  return init_params
