"""gather_rows: per-example outputs of a whole set, padding removed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver.train import data as data_lib
from perceiver.train import evaluation


def _fn(params, state, batch):
  del state
  return {
    'y': batch['x'] * params['w'],
    'pair': jnp.stack([batch['x'], -batch['x']], axis=-1),
  }


def test_rows_of_the_whole_set_in_order_without_padding():
  x = np.arange(10, dtype=np.float32)
  batches = data_lib.eval_batches(
    data_lib.ArraySource({'x': x}),
    global_batch=4,
    process_index=0,
    process_count=1,
  )
  rows = evaluation.gather_rows(
    jax.jit(_fn), {'w': jnp.float32(2.0)}, None, batches
  )
  # 10 examples in batches of 4: the last batch has 2 padding rows.
  np.testing.assert_array_equal(rows['y'], 2 * x)
  np.testing.assert_array_equal(rows['pair'], np.stack([x, -x], -1))


def test_batches_without_the_mask_are_refused():
  with pytest.raises(ValueError, match='batches: expected the engine'):
    evaluation.gather_rows(
      _fn, {'w': jnp.float32(1.0)}, None, [{'x': np.zeros(2, np.float32)}]
    )
