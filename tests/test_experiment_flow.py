"""The optical-flow experiment: config, loss and metrics against hand
references, tiled evaluation, and `:debug` trained end to end through
`perceiver.train.train` (needs the grain data engine: data_lib.Map,
RandomMap, train_iterator, eval_batches)."""

import os
import re

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import flow
from experiments.data import flow as flow_data
from perceiver import presets

LINE = re.compile(r'EPE: \d+\.\d\d \(zero flow: \d+\.\d\d\)')


def test_paper_config():
  c = flow.get_config()
  assert c.batch_size == 512
  assert c.total_steps == 480 * 400_000 // 512 == 375_000
  assert (c.optimizer.name, c.optimizer.base_lr) == ('lamb', 4e-4)
  assert c.optimizer.schedule == 'constant_cosine'
  assert c.optimizer.constant_fraction == 0.0 and not c.optimizer.scale_by_batch
  assert tuple(c.model.image_size) == (368, 496)
  assert c.model.z_index_dim == 2048 and c.model.flow_scale == 20.0
  assert c.data.augment and not c.data.reverse_pairs
  final = flow.get_config('final')
  assert not final.data.augment and final.data.reverse_pairs


def test_unknown_variant_and_missing_dir_are_errors():
  with pytest.raises(ValueError, match='variant'):
    flow.get_config('fast')
  with pytest.raises(ValueError, match='data.dir'):
    flow.validate(flow.get_config())
  c = flow.get_config('debug').unlock()
  c.data.source = 'chairs'
  c.data.dir = '/nonexistent/chairs'
  with pytest.raises(ValueError, match="data.dir.*'/nonexistent/chairs'"):
    flow.train_source(c)


def _naive_metrics(pred, gt, valid):
  """Per-pixel loops: EPE, zero-flow EPE and KITTI outliers."""
  epe = zero = fl = n = 0.0
  for y in range(gt.shape[0]):
    for x in range(gt.shape[1]):
      if not valid[y, x]:
        continue
      du, dv = pred[y, x] - gt[y, x]
      e = (du * du + dv * dv) ** 0.5
      m = (gt[y, x, 0] ** 2 + gt[y, x, 1] ** 2) ** 0.5
      epe, zero, n = epe + e, zero + m, n + 1
      fl += e > 3 and e > 0.05 * m
  return epe / n, zero / n, fl / n


def test_per_example_and_flow_errors_match_a_naive_loop():
  rng = np.random.default_rng(0)
  gt = rng.normal(scale=6, size=(2, 5, 7, 2)).astype(np.float32)
  pred = gt + rng.normal(scale=3, size=gt.shape).astype(np.float32)
  valid = rng.random((2, 5, 7)) > 0.3
  out = flow.per_example(jnp.asarray(pred), {'flow': gt, 'valid': valid})
  for b in range(2):
    epe, zero, fl = _naive_metrics(pred[b], gt[b], valid[b])
    np.testing.assert_allclose(out['loss'][b], epe, rtol=1e-5)
    np.testing.assert_allclose(out['zero_flow_epe'][b], zero, rtol=1e-5)
    np.testing.assert_allclose(out['fl'][b], fl, rtol=1e-6)
    sums = flow.flow_errors(pred[b], gt[b], valid[b])
    np.testing.assert_allclose(sums['epe'] / sums['count'], epe, rtol=1e-6)
    np.testing.assert_allclose(sums['fl'] / sums['count'], fl)


def test_kitti_outlier_needs_both_thresholds():
  gt = np.array([[[100.0, 0.0], [10.0, 0.0], [1.0, 0.0]]])
  pred = np.array([[[104.0, 0.0], [14.0, 0.0], [2.0, 0.0]]])
  sums = flow.flow_errors(pred, gt, np.ones((1, 3), bool))
  # 4 px on 100 (4% < 5%): no; 4 px on 10: yes; 1 px: no (< 3 px).
  assert sums['fl'] == 1.0


def test_epe_gradient_is_finite_at_zero_error():
  gt = np.zeros((1, 2, 2, 2), np.float32)
  grad = jax.grad(
    lambda p: flow.per_example(p, {'flow': gt, 'valid': np.ones((1, 2, 2))})[
      'loss'
    ].sum()
  )(jnp.zeros_like(gt))
  assert np.isfinite(np.asarray(grad)).all()


def test_forward_has_the_released_parameter_tree():
  c = flow.get_config('debug')
  batch = {
    'frame1': np.zeros((1, 48, 64, 3), np.uint8),
    'frame2': np.zeros((1, 48, 64, 3), np.uint8),
  }
  ours = jax.eval_shape(
    lambda: flow.make_forward(c.model).init(
      jax.random.PRNGKey(0), batch, is_training=True
    )
  )[0]
  net = presets.build('optical_flow', **flow.model_overrides(c.model))
  theirs = jax.eval_shape(
    lambda: net.init(
      jax.random.PRNGKey(0),
      jnp.zeros((1, 2, 48, 64, 3)),
      is_training=True,
    )
  )[0]
  assert jax.tree.map(
    lambda a: a.shape, hk.data_structures.to_mutable_dict(ours)
  ) == (
    jax.tree.map(lambda a: a.shape, hk.data_structures.to_mutable_dict(theirs))
  )


def test_evaluate_pairs_oracle_and_zero(tmp_path):
  record = flow_data.load_motorcycle()
  oracle = lambda f1, f2: record['flow']
  lines = []
  out = flow.evaluate_pairs(
    oracle,
    [record],
    'real',
    workdir=str(tmp_path),
    num_pngs=1,
    say=lines.append,
  )
  assert out['real/epe'] == 0 and out['real/fl_all'] == 0
  zero = flow.evaluate_pairs(
    lambda f1, f2: np.zeros_like(record['flow']),
    [record],
    'real',
    say=lines.append,
  )
  assert zero['real/epe'] == pytest.approx(out['real/zero_flow_epe'])
  # The motorcycle's mean |disparity| over known pixels (halved, 3.7..29.9).
  assert 10 < zero['real/epe'] < 20
  assert all(LINE.search(line) for line in lines)
  for kind in ('pred', 'gt'):
    assert os.path.isfile(tmp_path / f'flow_real_0_{kind}.png')


def test_debug_trains_end_to_end_and_evaluates(tmp_path, capsys):
  from perceiver.train import train  # pylint: disable=g-import-not-at-top

  config = flow.get_config('debug')
  result = train(config, flow.build_task, str(tmp_path))
  losses = result['losses']
  assert len(losses) == config.total_steps
  assert all(np.isfinite(v) for v in losses.values())
  assert set(result['eval']) >= {'eval/loss', 'eval/zero_flow_epe'}
  ts = result['train_state']
  lines = []
  metrics = flow.evaluate(
    config, ts.params, ts.state, str(tmp_path), say=lines.append
  )
  assert len(lines) == 2 and all(LINE.search(line) for line in lines)
  assert lines[0].startswith('synthetic (2 pairs)')
  assert lines[1].startswith('motorcycle (1 pairs)')
  assert np.isfinite(metrics['motorcycle/epe'])
  assert os.path.isfile(tmp_path / 'flow_motorcycle_0_pred.png')
  assert os.path.isfile(tmp_path / 'flow_synthetic_0_gt.png')
