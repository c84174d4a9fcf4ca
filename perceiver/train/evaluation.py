"""Per-example outputs of a whole evaluation set, gathered from every process.

Shapes: B global batch, b = B/P rows per process, N real examples in all.

Whole-set metrics (mAP, GLUE's Matthews correlation, bits per byte over all
masked bytes) need every example's output, not batch means; an experiment's
`Task.evaluate` gets them here.
"""

from typing import Callable, Dict, Iterable

import jax
from jax.experimental import multihost_utils
import numpy as np

from perceiver.train import mesh as mesh_lib
from perceiver.train.data import EVAL_MASK


def gather_rows(
  fn: Callable[..., Dict[str, jax.Array]],
  params,
  state,
  batches: Iterable[Dict[str, np.ndarray]],
) -> Dict[str, np.ndarray]:
  """`fn(params, state, batch)` over every batch, all processes' rows.

  Args:
    fn: a jitted `(params, state, batch) -> {name: [B, ...] array}`.
    params, state: the model's (possibly sharded) parameters and state.
    batches: this process's rows of each global batch [b, ...], each with
      the engine's float32 `data.EVAL_MASK` entry (1 real example, 0
      padding), as `data.eval_batches` yields them; `fn` gets the batch
      without it.

  Returns:
    {name: [N, ...] numpy}: the rows of every process concatenated in batch
    order (within a batch: process 0's rows first), padding rows removed.

  Raises:
    ValueError: a batch without the `data.EVAL_MASK` entry.
  """
  leaves = jax.tree.leaves(params)
  mesh = getattr(leaves[0].sharding, 'mesh', None) if leaves else None
  pieces: Dict[str, list] = {}
  for local in batches:
    if EVAL_MASK not in local:
      raise ValueError(
        f"batches: expected the engine's {EVAL_MASK!r} entry (padding "
        f'mask), got keys {sorted(local)}.'
      )
    local = dict(local)
    mask = np.asarray(local.pop(EVAL_MASK))
    if jax.process_count() > 1 and mesh is not None:
      out = fn(params, state, mesh_lib.global_batch(local, mesh))
      out = multihost_utils.process_allgather(out, tiled=True)
      mask = multihost_utils.process_allgather(mask, tiled=True)
    else:
      out = jax.device_get(fn(params, state, local))
    keep = np.asarray(mask) > 0
    for k, v in out.items():
      pieces.setdefault(k, []).append(np.asarray(v)[keep])
  return {k: np.concatenate(v) for k, v in pieces.items()}
