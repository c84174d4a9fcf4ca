"""experiments/mlm.py: `:debug` end to end, metrics, warm start, config."""

import numpy as np
import pytest

from experiments import mlm
from perceiver import checkpoints
from perceiver import train as train_lib


def _debug_config(tmp_path, **data):
  c = mlm.get_config('debug')
  c.unlock()
  c.data.cache_dir = str(tmp_path / 'cache')
  c.data.update(data)
  c.lock()
  return c


def test_debug_trains_and_evaluates_against_unigram(tmp_path):
  config = _debug_config(tmp_path)
  result = train_lib.train(config, mlm.build_task, str(tmp_path / 'run'))
  assert len(result['losses']) == config.total_steps
  assert all(np.isfinite(v) for v in result['losses'].values())
  metrics = mlm.evaluate(config, result['train_state'], 0, 1)
  assert 0.0 <= metrics['masked_accuracy'] <= 1.0
  # The unigram model, counted on training text, is far better than
  # uniform guessing over 256 byte values (8 bits) on held-out English.
  assert 3.0 < metrics['unigram_bits_per_byte'] < 6.0
  assert metrics['bits_per_byte'] > 0


def test_per_example_and_summarize_against_hand_counts():
  # One example, L = 3, V = 262: targets 10, 11, 12; bytes 0 and 2 masked.
  logits = np.full((1, 3, 262), -1e9, np.float32)
  logits[0, 0, 10] = logits[0, 0, 20] = 0.0  # p(target) = 1/2, argmax tie
  logits[0, 1, 11] = 0.0  # not masked: ignored
  logits[0, 2, 30] = 0.0
  logits[0, 2, 12] = np.log(1 / 3)  # p(target) = 1/4, wrong argmax
  batch = {
    'targets': np.asarray([[10, 11, 12]], np.int32),
    'target_mask': np.asarray([[1, 0, 1]], np.float32),
  }
  unigram = np.log(np.full(262, 1 / 256))
  unigram[:6] = -np.inf
  unigram[12] = np.log(2 / 256)  # the unigram argmax: byte id 12
  out = {
    k: np.asarray(v)
    for k, v in mlm.per_example(logits, batch, unigram_logp_V=unigram).items()
  }
  assert out['masked_bytes'][0] == 2
  assert out['bits'][0] == pytest.approx(1.0 + 2.0, rel=1e-5)
  assert out['loss'][0] == pytest.approx((np.log(2) + np.log(4)) / 2, rel=1e-5)
  assert out['correct'][0] == 1  # argmax picks the first of a tie: 10
  assert out['unigram_correct'][0] == 1
  assert out['unigram_bits'][0] == pytest.approx(8.0 + 7.0, rel=1e-5)
  m = mlm.summarize({k: float(v.sum()) for k, v in out.items()})
  assert m['bits_per_byte'] == pytest.approx(1.5, rel=1e-5)
  assert m['unigram_bits_per_byte'] == pytest.approx(7.5, rel=1e-5)
  assert m['bits_per_byte_vs_unigram'] == pytest.approx(0.2, rel=1e-5)


def test_warm_start_from_npz_loads_every_parameter(tmp_path):
  config = _debug_config(tmp_path)
  forward = mlm.make_forward(config)
  batch = {
    'inputs': np.zeros((1, config.data.seq_len), np.int32),
    'input_mask': np.ones((1, config.data.seq_len), np.int32),
  }
  import jax  # pylint: disable=g-import-not-at-top

  params, state = forward.init(jax.random.PRNGKey(1), batch, is_training=True)
  path = str(tmp_path / 'mlm.npz')
  checkpoints.save(path, params, state)
  lines = []
  warm = mlm.warm_start(forward, mlm.load_params(path), report=lines.append)
  got, _ = jax.jit(
    lambda: warm.init(jax.random.PRNGKey(2), batch, is_training=True)
  )()
  jax.tree.map(np.testing.assert_array_equal, got, params)
  assert 'none' in lines[0]
  # A checkpoint missing a parameter that must load is refused.
  partial = {k: v for k, v in mlm.load_params(path).items() if k != 'embed'}
  with pytest.raises(ValueError, match='init_checkpoint: 1 parameter'):
    mlm.warm_start(forward, partial, report=None).init(
      jax.random.PRNGKey(2), batch, is_training=True
    )


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('dir', '/no/such/corpus', 'data.dir'),
    ('mask_fraction', 1.5, 'data.mask_fraction'),
  ],
)
def test_validate_rejects_bad_fields(tmp_path, field, value, match):
  config = _debug_config(tmp_path, **{field: value})
  with pytest.raises(ValueError, match=match):
    mlm.validate(config)


def test_paper_config():
  c = mlm.get_config()
  assert (c.batch_size, c.total_steps, c.data.seq_len) == (2048, 500_000, 2048)
  assert (c.data.docs_per_sequence, c.data.mask_fraction) == (10, 0.15)
  o = c.optimizer
  assert (o.name, o.base_lr, o.warmup_steps, o.weight_decay) == (
    'lamb',
    1.25e-3,
    1000,
    0.01,
  )
  assert o.schedule == 'warmup_cosine' and not o.scale_by_batch
  with pytest.raises(ValueError, match='variant'):
    mlm.get_config('huge')
