"""gather_rows: per-example outputs of a whole set, padding removed."""

import os

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


def _masked_toy_task(key):
  """The toy task with its own `key` entry [B, DIM] (an input mask) in
  every batch, which the model uses; the engine must not replace it."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from perceiver.train.task import Task  # pylint: disable=g-import-not-at-top
  from tests import test_train_common as common  # pylint: disable=g-import-not-at-top

  def build_task(config, process_index, process_count):
    arrays = common.toy_arrays()
    arrays[key] = np.ones_like(arrays['x'])
    train = {k: v[:192] for k, v in arrays.items()}
    held = {k: v[192:] for k, v in arrays.items()}

    def forward_fn(batch, *, is_training):
      del is_training
      x = batch['x'] * batch[key]  # fails if the mask is not [B, DIM]
      return hk.Linear(common.NUM_CLASSES)(x)

    def per_example(logits, batch):
      return {
        'loss': optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['label']
        )
      }

    loader = dict(process_index=process_index, process_count=process_count)
    return Task(
      forward=hk.transform_with_state(forward_fn),
      per_example=per_example,
      train_data=data_lib.train_iterator(
        data_lib.ArraySource(train),
        global_batch=config.batch_size,
        seed=0,
        **loader,
      ),
      example_batch={k: v[:2] for k, v in train.items()},
      eval_data=lambda: data_lib.eval_batches(
        data_lib.ArraySource(held),
        global_batch=config.eval_batch_size,
        **loader,
      ),
    )

  return build_task


def test_a_task_with_its_own_mask_key_trains_and_evaluates(tmp_path):
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top
  from tests import test_train_common as common  # pylint: disable=g-import-not-at-top

  # 64 held-out examples in batches of 48: the last one is padded.
  config = common.toy_config(total_steps=2, eval_batch_size=48)
  out = loop.train(config, _masked_toy_task('mask'), str(tmp_path))
  assert set(out['eval']) == {'eval/loss'}
  assert os.path.exists(tmp_path / 'result.json')


def test_a_task_using_the_reserved_key_is_refused_naming_it(tmp_path):
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top
  from tests import test_train_common as common  # pylint: disable=g-import-not-at-top

  config = common.toy_config(total_steps=2)
  with pytest.raises(ValueError, match=f"'{data_lib.EVAL_MASK}' is reserved"):
    loop.train(config, _masked_toy_task(data_lib.EVAL_MASK), str(tmp_path))


def test_eval_batches_refuse_a_source_with_the_reserved_key():
  batches = data_lib.eval_batches(
    data_lib.ArraySource(
      {'x': np.zeros(4, np.float32), data_lib.EVAL_MASK: np.ones(4)}
    ),
    global_batch=4,
    process_index=0,
    process_count=1,
  )
  with pytest.raises(ValueError, match='source: the key'):
    next(iter(batches))
