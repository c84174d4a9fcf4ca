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
    (dict(num_pairs=2, max_layers=-1), 'max_layers'),
    (dict(num_pairs=2, texture_zoom=(0.0, 1.0)), 'texture_zoom'),
    (dict(num_pairs=2, max_shear=-0.1), 'max_shear'),
    (dict(num_pairs=2, sharpness=1.0), 'sharpness'),
    (dict(num_pairs=2, vertices=(2, 5)), 'vertices'),
  ],
)
def test_generator_rejects_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    autoflow.AutoFlowGenerator(**kwargs)


def test_generator_index_out_of_range():
  with pytest.raises(IndexError, match='index'):
    autoflow.AutoFlowGenerator(2, size=SIZE)[2]


def test_generator_slice_is_the_generators_pairs_from_start():
  gen = autoflow.AutoFlowGenerator(5, size=SIZE, seed=3)
  scene = autoflow.make_scene(max_layers=0, max_motion=2.0)
  plain = autoflow.GeneratorSlice(gen, start=3, num_pairs=2)
  staged = pickle.loads(
    pickle.dumps(
      autoflow.GeneratorSlice(gen, start=3, num_pairs=2, scene=scene)
    )
  )
  assert len(plain) == len(staged) == 2
  for i in range(2):
    direct = gen.render(3 + i, scene)
    assert set(staged[i]) == {'frame1', 'frame2', 'flow', 'valid'}
    for k in staged[i]:
      np.testing.assert_array_equal(staged[i][k], direct[k])
      np.testing.assert_array_equal(plain[i][k], gen[3 + i][k])
  with pytest.raises(IndexError, match=r'index.*\[0, 2\), got 2'):
    plain[2]
  with pytest.raises(ValueError, match='num_pairs: expected at most 2'):
    autoflow.GeneratorSlice(gen, start=3, num_pairs=3)
  with pytest.raises(ValueError, match='start'):
    autoflow.GeneratorSlice(gen, start=-1, num_pairs=1)


# ---------------------------------------------------------------------------
# Curriculum
# ---------------------------------------------------------------------------

# One global translation of at most 2 px (stage 0 of a curriculum).
TRANSLATION = autoflow.Scene(
  max_layers=0,
  max_motion=2.0,
  max_rotation_deg=0.0,
  max_log_scale=0.0,
  max_shear=0.0,
  background_motion=1.0,
  texture_zoom=(0.75, 1.25),
  radii=(0.1, 0.3),
  vertices=(3, 5),
)
LAYERED = autoflow.Scene(
  max_layers=4,
  max_motion=6.0,
  max_rotation_deg=10.0,
  max_log_scale=0.1,
  max_shear=0.05,
  background_motion=0.5,
  texture_zoom=(0.75, 2.25),
  radii=(0.2, 0.4),
  vertices=(4, 8),
)


def _curriculum():
  return autoflow.Curriculum(
    [
      autoflow.Stage('translation', 0.0, TRANSLATION, 0.0),
      autoflow.Stage('layered', 0.5, LAYERED, 1.0),
    ]
  )


class _Progress:
  """The engine's `Progress` as an op sees it (step, fraction)."""

  def __init__(self, fraction):
    self.step, self.fraction = 0, fraction


def _flat(scene):
  return np.hstack([np.ravel(v) for v in scene]).astype(float)


def test_schedule_at_hand_picked_fractions():
  c = _curriculum()
  assert c.at(0.0) == (TRANSLATION, 0.0)
  # A quarter of the run: halfway from stage 0 to the layered stage,
  # written out by hand (layers 0 -> 4: 2; vertices 3.5 -> 4, 6.5 -> 7).
  scene, severity = c.at(0.25)
  assert severity == 0.5
  assert scene.max_layers == 2 and scene.vertices == (4, 7)
  np.testing.assert_allclose(
    _flat(scene),
    _flat(
      autoflow.Scene(
        max_layers=2,
        max_motion=4.0,
        max_rotation_deg=5.0,
        max_log_scale=0.05,
        max_shear=0.025,
        background_motion=0.75,
        texture_zoom=(0.75, 1.75),
        radii=(0.15, 0.35),
        vertices=(4, 7),
      )
    ),
    rtol=1e-12,
  )
  scene, severity = c.at(0.125)
  assert scene.max_layers == 1 and scene.max_motion == 3.0
  assert severity == 0.25
  # Reached at 0.5, then constant; fractions past [0, 1] are clipped.
  for fraction in (0.5, 0.8, 1.0, 1.5):
    assert c.at(fraction) == (LAYERED, 1.0)
  assert c.at(-1.0) == (TRANSLATION, 0.0)
  assert c.severity(0.375) == 0.75


@pytest.mark.parametrize(
  'reach, augment, match',
  [
    ((0.1, 0.5), (0.0, 1.0), 'starting at 0'),
    ((0.0, 0.0), (0.0, 1.0), 'strictly increasing'),
    ((0.0, 1.5), (0.0, 1.0), r'in \[0, 1\]'),
    ((0.0, 0.5), (0.0, 2.0), 'layered.augment'),
  ],
)
def test_curriculum_rejects_bad_stages(reach, augment, match):
  with pytest.raises(ValueError, match=match):
    autoflow.Curriculum(
      [
        autoflow.Stage('translation', reach[0], TRANSLATION, augment[0]),
        autoflow.Stage('layered', reach[1], LAYERED, augment[1]),
      ]
    )
  with pytest.raises(ValueError, match='distinct'):
    autoflow.Curriculum([autoflow.Stage('a', 0.0, LAYERED, 0.0)] * 2)
  bad = LAYERED._replace(vertices=(5, 4))
  with pytest.raises(ValueError, match='layered.vertices'):
    autoflow.Curriculum([autoflow.Stage('layered', 0.0, bad, 0.0)])


def test_stage0_pairs_are_pure_global_translations():
  gen = autoflow.AutoFlowGenerator(6, size=SIZE, seed=8)
  for i in range(6):
    r = gen.render(i, TRANSLATION)
    flow = r['flow'].reshape(-1, 2)
    # Every pixel moves by the one vector, inside the stage's range.
    np.testing.assert_array_equal(flow, np.broadcast_to(flow[0], flow.shape))
    assert (np.abs(flow[0]) <= 2.0).all() and np.abs(flow[0]).max() > 0
    # Nothing is hidden but what leaves the image.
    u, v = flow[0]
    ys, xs = np.mgrid[: SIZE[0], : SIZE[1]]
    x2, y2 = np.rint(xs + u), np.rint(ys + v)
    leaves = (x2 < 0) | (x2 >= SIZE[1]) | (y2 < 0) | (y2 >= SIZE[0])
    np.testing.assert_array_equal(r['occluded'], leaves)
    # Frame 2 warped back by that vector is frame 1 away from the borders,
    # within bilinear interpolation of the texture: at most half the error
    # of that vector off by 1 px along either axis.
    inner = (slice(3, -3), slice(3, -3))

    def error(offset):
      warped = _warp(r['frame2'], r['flow'] + np.float32(offset))
      return np.abs(warped - r['frame1'])[inner]

    worse = min(error(d).mean() for d in ((1, 0), (-1, 0), (0, 1), (0, -1)))
    assert error((0, 0)).mean() < 0.5 * worse


def test_render_at_progress_is_deterministic_and_follows_the_stage():
  gen = autoflow.AutoFlowGenerator(4, size=SIZE, seed=9)
  c = pickle.loads(pickle.dumps(_curriculum()))
  source = autoflow.SceneIndices(4)
  assert len(source) == 4 and set(source[3]) == {'scene_index'}

  def at(index, fraction):
    return autoflow.render_at_progress(
      source[index], generator=gen, curriculum=c, progress=_Progress(fraction)
    )

  early, late = at(2, 0.0), at(2, 0.9)
  assert set(early) == {'frame1', 'frame2', 'flow', 'valid'}
  for k in early:
    np.testing.assert_array_equal(early[k], at(2, 0.0)[k])
    np.testing.assert_array_equal(late[k], gen.render(2, LAYERED)[k])
  # Stage 0 is one translation; the layered stage is not, and differs.
  assert len(np.unique(early['flow'].reshape(-1, 2), axis=0)) == 1
  assert len(np.unique(late['flow'].reshape(-1, 2), axis=0)) > 1
  assert not np.array_equal(early['frame2'], late['frame2'])
  assert not np.array_equal(at(3, 0.0)['frame1'], early['frame1'])
  with pytest.raises(IndexError, match='index'):
    source[4]


def test_default_scene_is_the_generators_layered_scene():
  # Today's ranges: the defaults of every entry point agree.
  gen = autoflow.AutoFlowGenerator(1, size=SIZE)
  assert gen.scene == autoflow.Scene() == autoflow.make_scene()
  assert autoflow.Scene().max_layers == 4
  assert autoflow.Scene().texture_zoom == (0.75, 2.5)


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


def test_symmetric_contrast_pivots_on_both_frames_mean_grey():
  """RAFT jitters the two frames stacked into one image: contrast moves
  each frame about their common mean grey (100 here), so two flat frames of
  grey 50 and 150 move apart; per-frame means would leave both unchanged."""
  r = {
    'frame1': np.full((2, 3, 3), 50, np.uint8),
    'frame2': np.full((2, 3, 3), 150, np.uint8),
  }
  out = A.photometric_jitter(
    r,
    np.random.default_rng(1),
    brightness=0,
    saturation=0,
    hue=0,
    asymmetric_prob=0.0,
  )
  rng = np.random.default_rng(1)
  rng.uniform(0, 0)  # the brightness draw
  c = 1 + rng.uniform(-0.4, 0.4)
  assert abs(c - 1) > 0.05
  np.testing.assert_array_equal(out['frame1'], np.rint((50 - 100) * c + 100))
  np.testing.assert_array_equal(out['frame2'], np.rint((150 - 100) * c + 100))


def test_random_erase_only_touches_frame2():
  r = _record(7)
  out = A.random_erase(r, np.random.default_rng(0), prob=1.0, box_range=(5, 10))
  np.testing.assert_array_equal(out['frame1'], r['frame1'])
  np.testing.assert_array_equal(out['flow'], r['flow'])
  changed = np.any(out['frame2'] != r['frame2'], -1)
  assert 0 < changed.sum() <= 2 * 9 * 9


def test_at_severity_scales_the_named_ranges():
  r = _record(8)
  ranges = dict(brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1)
  scaled = tuple(ranges)

  def run(fraction, **kw):
    return A.at_severity(
      r,
      np.random.default_rng(5),
      op=A.photometric_jitter,
      severity=_curriculum().severity,
      scaled=scaled,
      progress=_Progress(fraction),
      **kw,
    )

  # Severity 0 (stage 0): no jitter at all.
  off = run(0.0, **ranges)
  np.testing.assert_array_equal(off['frame1'], r['frame1'])
  # Severity 0.5 (fraction 0.25) is the op at half the ranges, same draws.
  half = run(0.25, **ranges)
  direct = A.photometric_jitter(
    r, np.random.default_rng(5), **{k: v / 2 for k, v in ranges.items()}
  )
  for k in ('frame1', 'frame2'):
    np.testing.assert_array_equal(half[k], direct[k])
  assert not np.array_equal(half['frame1'], r['frame1'])
  with pytest.raises(ValueError, match='scaled'):
    run(0.5, brightness=0.4)


RAFT_RANGES = dict(
  brightness=0.4,
  contrast=0.4,
  saturation=0.4,
  hue=0.15,
  asymmetric_prob=0.2,
  erase_prob=0.5,
  min_log2_scale=-0.2,
  max_log2_scale=0.6,
  spatial_prob=0.8,
  stretch_prob=0.8,
  max_log2_stretch=0.2,
  h_flip_prob=0.5,
  v_flip_prob=0.1,
)


def _through(ops, record, rng, fraction=None):
  """`record` through the engine ops `ops`, at training progress `fraction`
  (the engine's entries; None: none, for ops that take no progress)."""
  if fraction is not None:
    record = dict(record, _step=np.int64(0), _fraction=np.float64(fraction))
  for op in ops:
    record = op.random_map(record, rng)
  return {k: v for k, v in record.items() if not k.startswith('_')}


def test_raft_ops_are_the_four_ops_in_raft_order():
  """Against the ops called by hand with one generator, in RAFT's order
  (colour, erase, scale + crop, flips), on a pair large enough to scale."""
  r = _record(9)
  for seed in range(4):
    ops = A.raft_ops((32, 40), **RAFT_RANGES)
    got = _through(ops, r, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    want = A.photometric_jitter(
      r,
      rng,
      brightness=0.4,
      contrast=0.4,
      saturation=0.4,
      hue=0.15,
      asymmetric_prob=0.2,
    )
    want = A.random_erase(want, rng, prob=0.5)
    want = A.random_scale_crop(
      want,
      rng,
      crop_size=(32, 40),
      min_log2_scale=-0.2,
      max_log2_scale=0.6,
      spatial_prob=0.8,
      stretch_prob=0.8,
      max_log2_stretch=0.2,
      margin=8,
    )
    want = A.random_flip(want, rng, h_prob=0.5, v_prob=0.1)
    assert sorted(got) == sorted(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_raft_ops_at_severity_zero_only_crop_and_flip():
  """Under a curriculum at severity 0 (stage 0) the pair is only cropped
  (no scaling: spatial_prob scaled to 0) and possibly flipped."""
  r = _record(10)
  ops = A.raft_ops((32, 40), severity=_curriculum().severity, **RAFT_RANGES)
  pickle.loads(pickle.dumps(ops))  # loader workers get them pickled
  for seed in range(4):
    got = _through(ops, r, np.random.default_rng(seed), fraction=0.0)
    windows = [
      r['frame1'][i : i + 32, j : j + 40]
      for i in range(r['frame1'].shape[0] - 31)
      for j in range(r['frame1'].shape[1] - 39)
    ]
    flips = [w for win in windows for w in (win, win[:, ::-1], win[::-1])]
    flips += [win[::-1, ::-1] for win in windows]
    assert any(np.array_equal(got['frame1'], w) for w in flips)


def test_raft_ops_name_missing_and_unknown_ranges():
  ranges = dict(RAFT_RANGES, flip_prob=0.5)
  del ranges['hue']
  with pytest.raises(
    ValueError, match=r"ranges.*\['hue'\] missing.*\['flip_prob'\] unknown"
  ):
    A.raft_ops((32, 40), **ranges)


def test_shift_hue_rotates_the_colour_wheel_by_hand_values():
  # Pure red, green, blue and a grey; a third of a turn: Pillow's hue
  # 0 -> 85 (int(255 / 3)), i.e. 120 degrees: red -> green -> blue -> red.
  rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]])
  out = A.shift_hue(rgb.astype(np.uint8), 1 / 3)
  np.testing.assert_array_equal(
    out, [[[0, 255, 0], [0, 0, 255], [255, 0, 0], [90, 90, 90]]]
  )
  # Negative turns wrap: -1/3 of a turn is the inverse rotation, up to
  # one of Pillow's 256 hue levels (blue went to level 255, not 0: back at
  # 170 + 1, its red channel 6 instead of 0).
  back = A.shift_hue(out, -1 / 3)
  np.testing.assert_array_equal(
    back, [[[255, 0, 0], [0, 255, 0], [6, 0, 255], [90, 90, 90]]]
  )
  np.testing.assert_array_equal(A.shift_hue(rgb.astype(np.uint8), 0), rgb)
