"""The procedural AutoFlow-style generator and the training augmentation."""

import pickle

import numpy as np
import pytest
from scipy import ndimage

from experiments.data import autoflow
from experiments.data import flow_augment as A

SIZE = (48, 64)


def _warp(frame2, flow):
  """frame2 sampled at x + flow(x) (bilinear), float [H, W, 3]."""
  h, w = flow.shape[:2]
  ys, xs = np.mgrid[:h, :w].astype(np.float64)
  coords = [ys + flow[..., 1], xs + flow[..., 0]]
  return np.stack(
    [
      ndimage.map_coordinates(
        frame2[..., c].astype(np.float64), coords, order=1
      )
      for c in range(3)
    ],
    -1,
  )


def _away_from_edges(mask, flow):
  """Non-occluded pixels whose 3 x 3 neighbourhood has the same flow layer
  (bilinear warping mixes layers at their boundaries)."""
  u, v = flow[..., 0], flow[..., 1]
  smooth = np.ones_like(mask)
  for f in (u, v):
    lo = ndimage.minimum_filter(f, 3)
    hi = ndimage.maximum_filter(f, 3)
    smooth &= hi - lo < 3.0  # affine flow varies slowly inside a layer
  return ndimage.binary_erosion(mask, np.ones((5, 5))) & smooth


@pytest.mark.parametrize('index', [0, 1, 2, 3])
def test_warping_frame2_by_the_flow_gives_frame1(index):
  gen = autoflow.AutoFlowGenerator(8, size=SIZE, seed=1, max_motion=6.0)
  r = gen.render(index)
  ok = _away_from_edges(~r['occluded'], r['flow'])
  assert ok.mean() > 0.3
  err = np.abs(_warp(r['frame2'], r['flow']) - r['frame1']).max(-1)
  zero = np.abs(r['frame2'].astype(float) - r['frame1']).max(-1)
  # Within bilinear-interpolation tolerance of the textures, and far better
  # than assuming no motion.
  assert np.median(err[ok]) < 2.0
  assert err[ok].mean() < 0.3 * zero[ok].mean()


def test_static_background_is_exact():
  gen = autoflow.AutoFlowGenerator(
    4, size=SIZE, seed=2, background_motion=0.0, max_layers=1
  )
  for i in range(4):
    r = gen.render(i)
    still = np.all(r['flow'] == 0, -1)
    assert still.any()
    # Pixels where the background shows in both frames are identical.
    both = still & ~r['occluded']
    np.testing.assert_array_equal(r['frame1'][both], r['frame2'][both])


def test_pure_translation_flow_is_one_exact_vector_per_layer():
  gen = autoflow.AutoFlowGenerator(
    6,
    size=SIZE,
    seed=3,
    max_layers=1,
    max_rotation_deg=0.0,
    max_log_scale=0.0,
    max_shear=0.0,
    background_motion=0.0,
    max_motion=5.0,
  )
  for i in range(6):
    flow = gen[i]['flow'].reshape(-1, 2)
    vectors = np.unique(flow, axis=0)
    assert len(vectors) <= 2  # the static background and the polygon
    assert (np.abs(vectors) <= 5.0).all()
    assert [0.0, 0.0] in vectors.tolist()


def test_affine_layers_have_affine_flow():
  """Inside a layer the flow is affine in (x, y): its second differences
  vanish everywhere except across layer boundaries."""
  gen = autoflow.AutoFlowGenerator(3, size=SIZE, seed=4, max_layers=2)
  for i in range(3):
    flow = gen[i]['flow'].astype(np.float64)
    d2x = flow[:, 2:] - 2 * flow[:, 1:-1] + flow[:, :-2]
    d2y = flow[2:] - 2 * flow[1:-1] + flow[:-2]
    assert (np.abs(d2x) < 1e-4).all(-1).mean() > 0.8
    assert (np.abs(d2y) < 1e-4).all(-1).mean() > 0.8
    # ... and the flow is not constant: rotation/scale/shear are present.
    assert np.abs(flow[:, 1:] - flow[:, :-1]).max() > 1e-3


def test_deterministic_in_index_and_seed_and_picklable():
  gen = autoflow.AutoFlowGenerator(4, size=SIZE, seed=5)
  a = gen[2]
  b = pickle.loads(pickle.dumps(gen))[2]
  for k in ('frame1', 'frame2', 'flow', 'valid'):
    np.testing.assert_array_equal(a[k], b[k])
  assert set(a) == {'frame1', 'frame2', 'flow', 'valid'}
  assert a['frame1'].dtype == np.uint8 and a['flow'].dtype == np.float32
  assert not np.array_equal(gen[3]['flow'], a['flow'])
  other = autoflow.AutoFlowGenerator(4, size=SIZE, seed=6)[2]
  assert not np.array_equal(other['frame1'], a['frame1'])


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(num_pairs=0), 'num_pairs'),
    (dict(num_pairs=2, size=(4, 64)), 'size'),
    (dict(num_pairs=2, max_layers=0), 'max_layers'),
    (dict(num_pairs=2, vertices=(2, 5)), 'vertices'),
  ],
)
def test_generator_rejects_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    autoflow.AutoFlowGenerator(**kwargs)


def test_generator_index_out_of_range():
  with pytest.raises(IndexError, match='index'):
    autoflow.AutoFlowGenerator(2, size=SIZE)[2]


# ---------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------


def _record(seed=0):
  return autoflow.AutoFlowGenerator(1, size=SIZE, seed=seed, max_motion=5.0)[0]


def test_hflip_mirrors_and_negates_u():
  r = _record()
  out = A.random_flip(r, np.random.default_rng(0), h_prob=1.0, v_prob=0.0)
  np.testing.assert_array_equal(out['frame1'], r['frame1'][:, ::-1])
  np.testing.assert_array_equal(out['frame2'], r['frame2'][:, ::-1])
  np.testing.assert_array_equal(out['flow'][..., 0], -r['flow'][:, ::-1, 0])
  np.testing.assert_array_equal(out['flow'][..., 1], r['flow'][:, ::-1, 1])


def test_vflip_mirrors_and_negates_v():
  r = _record()
  out = A.random_flip(r, np.random.default_rng(0), h_prob=0.0, v_prob=1.0)
  np.testing.assert_array_equal(out['frame1'], r['frame1'][::-1])
  np.testing.assert_array_equal(out['flow'][..., 0], r['flow'][::-1, ..., 0])
  np.testing.assert_array_equal(out['flow'][..., 1], -r['flow'][::-1, ..., 1])


@pytest.mark.parametrize(
  'flip, axis, component', [(A.hflip, 1, 0), (A.vflip, 0, 1)]
)
def test_flipped_pairs_still_warp(flip, axis, component):
  """The flipped flow explains the flipped frames as well as before; without
  the sign change it would not."""
  gen = autoflow.AutoFlowGenerator(1, size=SIZE, seed=1, max_motion=5.0)
  r = gen.render(0)
  ok = _away_from_edges(~r['occluded'], r['flow'])
  ok_flipped = np.flip(ok, axis)
  out = flip(r)

  def error(rec, mask):
    return np.abs(_warp(rec['frame2'], rec['flow']) - rec['frame1'])[
      mask
    ].mean()

  unsigned = out['flow'].copy()
  unsigned[..., component] *= -1  # the sign change left out
  wrong = error(dict(out, flow=unsigned), ok_flipped)
  assert error(out, ok_flipped) == pytest.approx(error(r, ok), rel=1e-6)
  assert wrong > 3 * error(out, ok_flipped)


def test_flip_probabilities_zero_is_identity():
  r = _record()
  out = A.random_flip(r, np.random.default_rng(0), h_prob=0.0, v_prob=0.0)
  np.testing.assert_array_equal(out['flow'], r['flow'])


@pytest.mark.parametrize('scale', [(2.0, 2.0), (1.5, 0.75)])
def test_resize_scales_a_constant_flow(scale):
  h, w = 8, 12
  r = {
    'frame1': np.zeros((h, w, 3), np.uint8),
    'frame2': np.zeros((h, w, 3), np.uint8),
    'flow': np.broadcast_to(np.float32([1.5, -0.5]), (h, w, 2)).copy(),
    'valid': np.ones((h, w), bool),
  }
  out = A.resize(r, (int(h * scale[1]), int(w * scale[0])))
  assert out['flow'].shape == (int(h * scale[1]), int(w * scale[0]), 2)
  np.testing.assert_allclose(out['flow'][..., 0], 1.5 * scale[0], rtol=1e-6)
  np.testing.assert_allclose(out['flow'][..., 1], -0.5 * scale[1], rtol=1e-6)
  assert out['valid'].all()


def test_resize_keeps_invalid_flow_out():
  r = _record()
  r['valid'] = np.ones(SIZE, bool)
  r['valid'][10:20, 10:20] = False
  r['flow'][10:20, 10:20] = 1e4  # garbage where unknown (as KITTI stores 0)
  out = A.resize(r, (SIZE[0] * 3 // 2, SIZE[1] * 3 // 2))
  assert np.abs(out['flow']).max() < 100
  assert not out['valid'][16:29, 16:29].any()
  assert out['valid'].mean() > 0.8


def test_scaled_pair_still_warps():
  gen = autoflow.AutoFlowGenerator(1, size=SIZE, seed=2, max_motion=5.0)
  r = gen.render(0)
  ok = _away_from_edges(~r['occluded'], r['flow'])
  out = A.resize(r, (SIZE[0] * 3 // 2, SIZE[1] * 3 // 2))
  # The nearest source pixel of each output pixel (centres aligned).
  rows = np.rint((np.arange(out['valid'].shape[0]) + 0.5) / 1.5 - 0.5)
  cols = np.rint((np.arange(out['valid'].shape[1]) + 0.5) / 1.5 - 0.5)
  ok_out = ok[rows.astype(int)][:, cols.astype(int)]
  err = np.abs(_warp(out['frame2'], out['flow']) - out['frame1'])[ok_out]
  zero = np.abs(out['frame2'].astype(float) - out['frame1'])[ok_out]
  assert err.mean() < 0.3 * zero.mean()
  # Unscaled flow on the scaled frames explains them worse.
  small = np.abs(_warp(out['frame2'], out['flow'] / 1.5) - out['frame1'])
  assert small[ok_out].mean() > 1.5 * err.mean()


def test_random_scale_crop_without_scaling_is_a_window():
  r = _record(3)
  out = A.random_scale_crop(
    r, np.random.default_rng(7), crop_size=(32, 40), spatial_prob=0.0, margin=0
  )
  assert out['frame1'].shape == (32, 40, 3)
  found = [
    (y, x)
    for y in range(SIZE[0] - 32 + 1)
    for x in range(SIZE[1] - 40 + 1)
    if np.array_equal(r['flow'][y : y + 32, x : x + 40], out['flow'])
    and np.array_equal(r['frame1'][y : y + 32, x : x + 40], out['frame1'])
  ]
  assert len(found) >= 1


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_scale_crop_shapes_and_determinism(seed):
  r = _record(4)
  kw = dict(crop_size=(40, 56), min_log2_scale=-0.5, max_log2_scale=0.5)
  a = A.random_scale_crop(r, np.random.default_rng(seed), **kw)
  b = A.random_scale_crop(r, np.random.default_rng(seed), **kw)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert a['flow'].shape == (40, 56, 2) and a['valid'].shape == (40, 56)


def test_small_input_is_scaled_up_to_the_crop():
  r = _record(5)
  out = A.random_scale_crop(
    r, np.random.default_rng(0), crop_size=(60, 80), spatial_prob=0.0
  )
  assert out['frame1'].shape == (60, 80, 3)


def test_photometric_jitter():
  r = _record(6)
  same = dict(r, frame2=r['frame1'].copy())
  sym = A.photometric_jitter(
    same, np.random.default_rng(0), asymmetric_prob=0.0
  )
  np.testing.assert_array_equal(sym['frame1'], sym['frame2'])
  assert not np.array_equal(sym['frame1'], r['frame1'])
  asym = A.photometric_jitter(
    same, np.random.default_rng(0), asymmetric_prob=1.0
  )
  assert not np.array_equal(asym['frame1'], asym['frame2'])
  np.testing.assert_array_equal(asym['flow'], r['flow'])
  off = A.photometric_jitter(
    r, np.random.default_rng(0), brightness=0, contrast=0, saturation=0, hue=0
  )
  np.testing.assert_array_equal(off['frame1'], r['frame1'])


def test_photometric_brightness_alone_scales_pixels():
  r = {'frame1': np.full((2, 2, 3), 100, np.uint8)}
  r['frame2'] = r['frame1']
  out = A.photometric_jitter(
    r, np.random.default_rng(3), contrast=0, saturation=0, hue=0
  )
  b = 1 + np.random.default_rng(3).uniform(-0.4, 0.4)
  assert out['frame1'][0, 0, 0] == np.rint(100 * b)


def test_random_erase_only_touches_frame2():
  r = _record(7)
  out = A.random_erase(r, np.random.default_rng(0), prob=1.0, box_range=(5, 10))
  np.testing.assert_array_equal(out['frame1'], r['frame1'])
  np.testing.assert_array_equal(out['flow'], r['flow'])
  changed = np.any(out['frame2'] != r['frame2'], -1)
  assert 0 < changed.sum() <= 2 * 9 * 9
