"""Optical-flow metrics (EPE, Fl-all), the mean-flow and block-matching
baselines and the scoring of pair sets, against naive per-pixel loops and
hand-computed values."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.data import flow as flow_data
from experiments.data import flow_metrics
from perceiver import tasks

LINE = re.compile(
  r'EPE: \d+\.\d\d \(zero flow: \d+\.\d\d(, [a-z ]+: \d+\.\d\d)*\)'
)


def _naive_block_match(frame1, frame2, radius, window):
  """Per-pixel loops: the displacement of least SSD over the window, the
  shortest move first on ties; a window pixel outside the image is the
  nearest inside one, and frame 2 outside the image is its nearest pixel."""
  h, w = frame1.shape[:2]
  half = window // 2
  f1, f2 = frame1.astype(float), frame2.astype(float)
  clip_y = lambda y: min(max(y, 0), h - 1)
  clip_x = lambda x: min(max(x, 0), w - 1)
  moves = sorted(
    [
      (u, v)
      for v in range(-radius, radius + 1)
      for u in range(-radius, radius + 1)
    ],
    key=lambda m: m[0] ** 2 + m[1] ** 2,
  )
  out = np.zeros((h, w, 2))
  for y in range(h):
    for x in range(w):
      best = np.inf
      for u, v in moves:
        cost = 0.0
        for dy in range(-half, half + 1):
          for dx in range(-half, half + 1):
            py, px = clip_y(y + dy), clip_x(x + dx)
            diff = f1[py, px] - f2[clip_y(py + v), clip_x(px + u)]
            cost += float(np.sum(diff**2))
        if cost < best:
          best, out[y, x] = cost, (u, v)
  return out


def test_block_matching_recovers_an_integer_translation():
  rng = np.random.default_rng(0)
  scene = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
  frame1 = scene[10:30, 10:40]
  u, v = 3, -2  # frame-1 pixel (x, y) is at (x + 3, y - 2) in frame 2
  frame2 = scene[10 - v : 30 - v, 10 - u : 40 - u]
  got = flow_metrics.block_match(frame1, frame2, radius=4, window=5)
  inner = got[2:-2, 5:-5]  # windows inside both frames
  np.testing.assert_array_equal(inner, np.broadcast_to([u, v], inner.shape))
  # Everywhere, borders included, the naive search agrees.
  naive = _naive_block_match(frame1[:12, :14], frame2[:12, :14], 3, 3)
  np.testing.assert_array_equal(
    flow_metrics.block_match(
      frame1[:12, :14], frame2[:12, :14], radius=3, window=3
    ),
    naive,
  )
  # A flat pair: every move ties, the shortest (none) wins.
  flat = np.full((8, 8, 3), 7, np.uint8)
  assert not flow_metrics.block_match(flat, flat, radius=2, window=3).any()
  with pytest.raises(ValueError, match='window'):
    flow_metrics.block_match(frame1, frame2, window=4)
  with pytest.raises(ValueError, match='frame2_HW3'):
    flow_metrics.block_match(frame1, frame2[1:])


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


def test_epe_per_example_and_flow_errors_match_a_naive_loop():
  rng = np.random.default_rng(0)
  gt = rng.normal(scale=6, size=(2, 5, 7, 2)).astype(np.float32)
  pred = gt + rng.normal(scale=3, size=gt.shape).astype(np.float32)
  valid = rng.random((2, 5, 7)) > 0.3
  out = flow_metrics.epe_per_example(jnp.asarray(pred), gt, valid)
  for b in range(2):
    epe, zero, fl = _naive_metrics(pred[b], gt[b], valid[b])
    np.testing.assert_allclose(out['epe'][b], epe, rtol=1e-5)
    np.testing.assert_allclose(out['zero_flow_epe'][b], zero, rtol=1e-5)
    np.testing.assert_allclose(out['fl'][b], fl, rtol=1e-6)
    sums = flow_metrics.flow_errors(pred[b], gt[b], valid[b])
    np.testing.assert_allclose(sums['epe'] / sums['count'], epe, rtol=1e-6)
    np.testing.assert_allclose(sums['fl'] / sums['count'], fl)


def test_kitti_outlier_needs_both_thresholds():
  gt = np.array([[[100.0, 0.0], [10.0, 0.0], [1.0, 0.0]]])
  pred = np.array([[[104.0, 0.0], [14.0, 0.0], [2.0, 0.0]]])
  sums = flow_metrics.flow_errors(pred, gt, np.ones((1, 3), bool))
  # 4 px on 100 (4% < 5%): no; 4 px on 10: yes; 1 px: no (< 3 px).
  assert sums['fl'] == 1.0


def test_epe_gradient_is_finite_at_zero_error():
  gt = np.zeros((1, 2, 2, 2), np.float32)
  valid = np.ones((1, 2, 2), bool)
  grad = jax.grad(
    lambda p: flow_metrics.epe_per_example(p, gt, valid)['epe'].sum()
  )(jnp.zeros_like(gt))
  assert np.isfinite(np.asarray(grad)).all()


def test_evaluate_pairs_oracle_and_zero(tmp_path):
  record = flow_data.load_motorcycle()
  oracle = lambda f1, f2: record['flow']
  lines, pngs = [], {}
  out = flow_metrics.evaluate_pairs(
    oracle,
    [record],
    'real',
    compared=flow_metrics.baseline_epes(
      [record],
      dict(mean_flow=flow_metrics.mean_flow, oracle=lambda r: r['flow']),
    ),
    pngs=pngs,
    num_pngs=1,
    say=lines.append,
  )
  assert sorted(pngs) == ['flow_real_0_gt.png', 'flow_real_0_pred.png']
  assert out['epe'] == 0 and out['fl_all'] == 0
  assert out['oracle_epe'] == 0
  # The per-pair mean flow's EPE, by hand: |u - mean u| over known pixels
  # (the motorcycle's flow is horizontal).
  u = record['flow'][..., 0][record['valid']]
  assert out['mean_flow_epe'] == pytest.approx(
    np.abs(u - u.mean()).mean(), rel=1e-6
  )
  drawn = {}
  zero = flow_metrics.evaluate_pairs(
    lambda f1, f2: np.zeros_like(record['flow']),
    [record],
    'real',
    pngs=drawn,
    num_pngs=1,
    say=lines.append,
  )
  assert zero['epe'] == pytest.approx(out['zero_flow_epe'])
  # The motorcycle's mean |disparity| over known pixels (halved, 3.7..29.9).
  assert 10 < zero['epe'] < 20
  assert all(LINE.search(line) for line in lines)
  assert ', mean flow: ' in lines[0] and ', oracle: 0.00)' in lines[0]
  # The images of the zero prediction: the colour wheel of the prediction
  # and of the known ground truth (zero where unknown) on one scale, the
  # largest known |flow|, written as they are.
  flow_metrics.write_pngs(drawn, str(tmp_path))
  gt = np.where(record['valid'][..., None], record['flow'], 0.0)
  scale = np.linalg.norm(gt, axis=-1).max()
  for kind, flow_HW2 in (('pred', np.zeros_like(gt)), ('gt', gt)):
    with Image.open(tmp_path / f'flow_real_0_{kind}.png') as image:
      np.testing.assert_array_equal(
        np.asarray(image), tasks.flow_to_color(flow_HW2, scale)
      )


def _records(seed, num, size=(4, 5)):
  rng = np.random.default_rng(seed)
  return [
    {
      'frame1': rng.integers(0, 256, (*size, 3), dtype=np.uint8),
      'frame2': rng.integers(0, 256, (*size, 3), dtype=np.uint8),
      'flow': rng.normal(scale=5, size=(*size, 2)).astype(np.float32),
      'valid': rng.random(size) > 0.2,
    }
    for _ in range(num)
  ]


def test_evaluate_pairs_pools_pixels_over_the_pairs():
  pairs = _records(0, 3)
  predict = lambda f1, f2: np.full(f1.shape[:2] + (2,), [1.5, -2.0])
  still = lambda record: np.zeros_like(record['flow'])
  lines = []
  out = flow_metrics.evaluate_pairs(
    predict,
    iter(pairs),
    'a',
    compared=flow_metrics.baseline_epes(iter(pairs), dict(still=still)),
    say=lines.append,
  )
  # Pixel-weighted over the pooled valid pixels of the pairs (the naive
  # loop over the pairs stacked into one image).
  stack = lambda k: np.concatenate([p[k] for p in pairs])
  gt, valid = stack('flow').astype(np.float64), stack('valid')
  epe, zero, fl = _naive_metrics(predict(gt, gt), gt, valid)
  assert out['epe'] == pytest.approx(epe, rel=1e-9)
  assert out['zero_flow_epe'] == pytest.approx(zero, rel=1e-9)
  assert out['fl_all'] == pytest.approx(fl, rel=1e-9)
  # Predicting zero: the baseline's EPE is the zero-flow EPE.
  assert out['still_epe'] == pytest.approx(zero, rel=1e-9)
  assert lines[0].startswith('a (3 pairs) EPE') and LINE.search(lines[0])


def test_pairs_without_valid_pixels_are_refused():
  pairs = [dict(_records(0, 1)[0], valid=np.zeros((4, 5), bool))]
  zero = lambda f1, f2: np.zeros(f1.shape[:2] + (2,))
  with pytest.raises(ValueError, match='a: no valid pixels'):
    flow_metrics.evaluate_pairs(zero, pairs, 'a', say=lambda _: None)
  with pytest.raises(ValueError, match='no valid pixels'):
    flow_metrics.baseline_epes(pairs, dict(zero=lambda r: r['flow']))
