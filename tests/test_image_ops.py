"""Image ops: each RandAugment operation against hand-computed values, and
the crop / flip / resize / normalise ops of the ImageNet recipe.

Expected values are worked out by hand from the released definitions
(autoaugment.py, tf.image): float -> uint8 casts truncate, grey is
trunc(255.5 * (0.2989 r + 0.5870 g + 0.1140 b) / 255).
"""

import numpy as np
import pytest

from experiments.data import image_ops
from experiments.data import randaugment as ra
from perceiver import tasks

FILL = 128


def _img(values, channels=3):
  """uint8 [H, W, 3] from a 2-D list (the value repeated over channels)."""
  a = np.asarray(values, np.uint8)
  return np.repeat(a[..., None], channels, axis=-1)


def _px(*rgb):
  return np.asarray([[rgb]], np.uint8)  # [1, 1, 3]


# ---------------------------------------------------------------------------
# Pixel ops
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  'a,b,factor,expected',
  [
    (10, 110, 0.5, 60),
    (10, 110, 0.25, 35),
    (10, 13, 0.5, 11),  # 11.5 truncated
    (10, 110, 1.5, 160),  # extrapolation
    (10, 110, 3.0, 255),  # 310 clipped
    (100, 50, 3.0, 0),  # -50 clipped
    (10, 110, 0.0, 10),
    (10, 110, 1.0, 110),
  ],
)
def test_blend(a, b, factor, expected):
  out = ra.blend(_px(a, a, a), _px(b, b, b), factor)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, _px(expected, expected, expected))


@pytest.mark.parametrize(
  'rgb,grey',
  [
    ((100, 150, 200), 141),  # 140.74 / 255 * 255.5 = 141.02
    ((10, 0, 0), 2),  # 2.99 truncated
    ((255, 255, 255), 255),  # 0.9999 * 255.5 = 255.47
    ((1, 1, 1), 1),
    ((0, 0, 0), 0),
  ],
)
def test_grayscale(rgb, grey):
  assert ra.grayscale(_px(*rgb)).item() == grey


def test_autocontrast():
  image = np.stack(
    [
      np.asarray([[50, 100, 200]], np.uint8),  # scale 1.7, offset -85
      np.asarray([[7, 7, 7]], np.uint8),  # constant: unchanged
      np.asarray([[0, 3, 255]], np.uint8),  # already full range
    ],
    axis=-1,
  )
  out = ra.autocontrast(image)
  np.testing.assert_array_equal(out[..., 0], [[0, 85, 255]])
  np.testing.assert_array_equal(out[..., 1], [[7, 7, 7]])
  np.testing.assert_array_equal(out[..., 2], [[0, 3, 255]])


def test_equalize():
  # 1,020 pixels: 510 of 10, 255 of 20, 255 of 30 in channel 0.
  # step = (1020 - 255) // 255 = 3; lut[v] = (count below v + 1) // 3:
  # 10 -> 0, 20 -> 511 // 3 = 170, 30 -> 766 // 3 = 255.
  values = np.asarray([10] * 510 + [20] * 255 + [30] * 255, np.uint8)
  image = np.zeros((30, 34, 3), np.uint8)
  image[..., 0] = values.reshape(30, 34)
  image[..., 1] = 99  # one level: step 0, unchanged
  image[..., 2] = values.reshape(30, 34) // 10  # 1, 2, 3: same counts
  out = ra.equalize(image)
  np.testing.assert_array_equal(
    out[..., 0], np.choose(values // 10 - 1, [0, 170, 255]).reshape(30, 34)
  )
  np.testing.assert_array_equal(out[..., 1], 99)
  np.testing.assert_array_equal(out[..., 2], out[..., 0])


def test_invert_posterize_solarize():
  image = _img([[0, 127, 128, 219, 255]])
  np.testing.assert_array_equal(
    ra.invert(image), _img([[255, 128, 127, 36, 0]])
  )
  # 219 = 0b11011011.
  np.testing.assert_array_equal(
    ra.posterize(image, 2), _img([[0, 64, 128, 192, 192]])
  )
  np.testing.assert_array_equal(
    ra.posterize(image, 4), _img([[0, 112, 128, 208, 240]])
  )
  np.testing.assert_array_equal(ra.posterize(image, 0), _img([[0] * 5]))
  np.testing.assert_array_equal(
    ra.solarize(image, 128), _img([[0, 127, 127, 36, 0]])
  )
  np.testing.assert_array_equal(ra.solarize(image, 256), image)


def test_solarize_add():
  image = _img([[0, 100, 127, 128, 250]])
  np.testing.assert_array_equal(
    ra.solarize_add(image, 55), _img([[55, 155, 182, 128, 250]])
  )
  np.testing.assert_array_equal(
    ra.solarize_add(image, 200), _img([[200, 255, 255, 128, 250]])
  )


def test_color():
  image = _px(100, 150, 200)  # grey 141
  np.testing.assert_array_equal(ra.color(image, 0.0), _px(141, 141, 141))
  # 141 + 0.5 (c - 141): 120.5, 145.5, 170.5 truncated.
  np.testing.assert_array_equal(ra.color(image, 0.5), _px(120, 145, 170))
  np.testing.assert_array_equal(ra.color(image, 1.0), image)


@pytest.mark.parametrize(
  'shape,level', [((16, 16), 1), ((32, 32), 4), ((100, 1000), 255)]
)
def test_contrast_degenerate_is_pixel_count_over_256(shape, level):
  image = np.full(shape + (3,), 101, np.uint8)
  np.testing.assert_array_equal(ra.contrast(image, 0.0), level)
  # level + 0.5 (101 - level), truncated.
  np.testing.assert_array_equal(
    ra.contrast(image, 0.5), int(level + 0.5 * (101 - level))
  )


def test_brightness():
  image = _img([[101, 100, 200]])
  np.testing.assert_array_equal(
    ra.brightness(image, 0.5), _img([[50, 50, 100]])
  )
  np.testing.assert_array_equal(
    ra.brightness(image, 2.0), _img([[202, 200, 255]])
  )


def test_sharpness():
  # Interior pixel: (8 neighbours + 5 x centre) / 13, truncated; the border
  # keeps its values.
  image = _img([[10, 10, 10, 10], [10, 36, 37, 10], [10, 10, 10, 10]])
  # (1,1): (7*10 + 37 + 5*36) / 13 = 287 / 13 = 22.08 -> 22
  # (1,2): (7*10 + 36 + 5*37) / 13 = 291 / 13 = 22.38 -> 22
  smooth = _img([[10, 10, 10, 10], [10, 22, 22, 10], [10, 10, 10, 10]])
  np.testing.assert_array_equal(ra.sharpness(image, 0.0), smooth)
  # 22 + 0.5 (36 - 22) = 29; 22 + 0.5 (37 - 22) = 29.5 -> 29
  np.testing.assert_array_equal(
    ra.sharpness(image, 0.5),
    _img([[10, 10, 10, 10], [10, 29, 29, 10], [10, 10, 10, 10]]),
  )
  np.testing.assert_array_equal(ra.sharpness(image, 1.0), image)


# ---------------------------------------------------------------------------
# Geometric ops (nearest pixel, fill 128)
# ---------------------------------------------------------------------------

GRID = np.arange(1, 21, dtype=np.uint8).reshape(4, 5)  # [H=4, W=5], 1..20


@pytest.mark.parametrize('size', [(3, 3), (4, 4)])
@pytest.mark.parametrize('degrees,k', [(90, 1), (-90, -1), (180, 2)])
def test_rotate_quarter_turns(size, degrees, k):
  image = _img(np.arange(1, size[0] * size[1] + 1).reshape(size))
  # Counter-clockwise as displayed = np.rot90 with k > 0.
  np.testing.assert_array_equal(ra.rotate(image, degrees), np.rot90(image, k))


def test_rotate_45_fills_corners_keeps_centre():
  image = _img(np.arange(1, 26).reshape(5, 5))
  out = ra.rotate(image, 45.0, fill=FILL)
  # Output (0, 0) reads input x = 2, y = 2 - 2 sqrt(2) + ... = -0.83 -> -1:
  # outside, so filled; the centre maps onto itself.
  assert (out[0, 0] == FILL).all() and (out[4, 4] == FILL).all()
  np.testing.assert_array_equal(out[2, 2], image[2, 2])
  # Output (x=2, y=0) reads (2 + 2 sin45, 2 - 2 cos45) ~ (3.41, 0.59) -> (3, 1).
  np.testing.assert_array_equal(out[0, 2], image[1, 3])


def test_shear_x():
  # Output (x, y) reads input (round(x + level y), y); level -0.3:
  # y=0: x; y=1: x - 0.3 -> x; y=2: x - 0.6 -> x - 1; y=3: x - 0.9 -> x - 1.
  out = ra.shear_x(_img(GRID), -0.3, fill=FILL)[..., 0]
  f = FILL
  expected = [
    [1, 2, 3, 4, 5],
    [6, 7, 8, 9, 10],
    [f, 11, 12, 13, 14],
    [f, 16, 17, 18, 19],
  ]
  np.testing.assert_array_equal(out, expected)


def test_shear_y():
  # Output (x, y) reads input (x, round(y + level x)); level 0.3:
  # x=0: y; x=1: y + 0.3 -> y; x=2: y + 0.6 -> y + 1; x=3: y + 0.9 -> y + 1;
  # x=4: y + 1.2 -> y + 1.
  out = ra.shear_y(_img(GRID), 0.3, fill=FILL)[..., 0]
  f = FILL
  expected = [
    [1, 2, 8, 9, 10],
    [6, 7, 13, 14, 15],
    [11, 12, 18, 19, 20],
    [16, 17, f, f, f],
  ]
  np.testing.assert_array_equal(out, expected)


def test_translate():
  f = FILL
  out = ra.translate_x(_img(GRID), 2.0, fill=FILL)[..., 0]
  np.testing.assert_array_equal(out[0], [3, 4, 5, f, f])  # moved left by 2
  out = ra.translate_x(_img(GRID), -1.0, fill=FILL)[..., 0]
  np.testing.assert_array_equal(out[1], [f, 6, 7, 8, 9])
  out = ra.translate_y(_img(GRID), 1.0, fill=FILL)[..., 0]
  np.testing.assert_array_equal(out[:, 0], [6, 11, 16, f])  # moved up by 1
  out = ra.translate_y(_img(GRID), -50.0, fill=FILL)
  np.testing.assert_array_equal(out, FILL)


def test_cutout():
  f = FILL
  out = ra.cutout(_img(GRID), 1, (1, 2), fill=FILL)[..., 0]
  # Rows [0, 2), cols [1, 3).
  expected = GRID.copy()
  expected[0:2, 1:3] = f
  np.testing.assert_array_equal(out, expected)
  out = ra.cutout(_img(GRID), 2, (3, 0), fill=FILL)[..., 0]
  expected = GRID.copy()
  expected[1:4, 0:2] = f  # rows [1, 5) and cols [-2, 2), clipped
  np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------
# Magnitudes and the RandAugment op
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  'name,magnitude,expected',
  [
    ('AutoContrast', 5, ()),
    ('Posterize', 5, (2,)),
    ('Posterize', 10, (4,)),
    ('Solarize', 5, (128,)),
    ('SolarizeAdd', 5, (55,)),
    ('SolarizeAdd', 10, (110,)),
    ('Color', 5, (1.0,)),
    ('Sharpness', 10, (1.9,)),
    ('Contrast', 0, (0.1,)),
  ],
)
def test_op_args_fixed(name, magnitude, expected):
  args = ra.op_args(name, magnitude, np.random.default_rng(0), (8, 8, 3))
  np.testing.assert_allclose(args, expected)


@pytest.mark.parametrize(
  'name,magnitude,value',
  [
    ('Rotate', 5, 15.0),
    ('ShearX', 5, 0.15),
    ('ShearY', 10, 0.3),
    ('TranslateX', 5, 50.0),
    ('TranslateY', 10, 100.0),
  ],
)
def test_op_args_signed(name, magnitude, value):
  rng = np.random.default_rng(0)
  draws = [ra.op_args(name, magnitude, rng, (8, 8, 3))[0] for _ in range(200)]
  np.testing.assert_allclose(np.abs(draws), value)
  assert 60 < sum(d > 0 for d in draws) < 140


def test_op_args_cutout():
  rng = np.random.default_rng(0)
  pads, centres = zip(
    *[ra.op_args('Cutout', 5, rng, (6, 9, 3)) for _ in range(300)]
  )
  assert set(pads) == {20}  # int(5 / 10 * 40)
  ys, xs = zip(*centres)
  assert set(ys) == set(range(6)) and set(xs) == set(range(9))
  pad = ra.op_args('Cutout', 5, rng, (6, 9, 3), cutout_const=8)[0]
  assert pad == 4


def test_randaugment_record_op():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
  record = {'image': image, 'label': np.int32(3)}
  kw = dict(num_layers=4, magnitude=5)
  a = ra.randaugment(record, np.random.default_rng(1), **kw)
  b = ra.randaugment(record, np.random.default_rng(1), **kw)
  np.testing.assert_array_equal(a['image'], b['image'])
  assert a['label'] == 3 and a['image'].dtype == np.uint8
  assert a['image'].shape == image.shape
  same = ra.randaugment(
    record, np.random.default_rng(1), num_layers=0, magnitude=5
  )
  np.testing.assert_array_equal(same['image'], image)
  # One layer picks each of the 16 ops with probability 1/16: over 800
  # seeds, count outputs equal to each op's own result.
  hits = np.zeros(len(ra.OPS))
  for seed in range(800):
    out = ra.randaugment(
      record, np.random.default_rng(seed), num_layers=1, magnitude=5
    )
    op = ra.OPS[np.random.default_rng(seed).integers(len(ra.OPS))]
    hits[ra.OPS.index(op)] += 1
    rng_op = np.random.default_rng(seed)
    rng_op.integers(len(ra.OPS))
    np.testing.assert_array_equal(
      out['image'], ra.apply_op(op, image, 5, rng_op)
    )
  assert hits.min() > 25 and hits.max() < 80
  with pytest.raises(ValueError, match=r"record\['image'\]: expected uint8"):
    ra.randaugment({'image': image.astype(np.float32)}, rng, **kw)


def test_apply_op_unknown_name():
  with pytest.raises(ValueError, match='name: expected one of'):
    ra.apply_op('Blur', _img([[1]]), 5, np.random.default_rng(0))


# ---------------------------------------------------------------------------
# Crops, flip, resize, normalisation
# ---------------------------------------------------------------------------


def test_sample_crop_box_properties():
  rng = np.random.default_rng(0)
  height, width = 90, 120
  areas = []
  for _ in range(500):
    top, left, h, w = image_ops.sample_crop_box(height, width, rng)
    assert 0 <= top <= height - h and 0 <= left <= width - w
    # min_object_covered 0.1 raises the least area from 0.08 to 0.1.
    assert 0.1 * height * width <= h * w <= height * width
    # Aspect within [3/4, 4/3] up to the rounding of w = round(h a).
    assert 3 / 4 - 0.5 / h <= w / h <= 4 / 3 + 0.5 / h
    areas.append(h * w / (height * width))
  assert min(areas) < 0.2 and max(areas) > 0.8


def test_sample_crop_box_fixed_size_and_failure():
  rng = np.random.default_rng(0)
  # Area exactly 1/4 with aspect 1: always 50 x 50, corner uniform in 0..50.
  boxes = [
    image_ops.sample_crop_box(
      100, 100, rng, area_range=(0.25, 0.25), aspect_range=(1, 1)
    )
    for _ in range(300)
  ]
  assert {b[2:] for b in boxes} == {(50, 50)}
  assert {b[0] for b in boxes} == set(range(51))
  # Width 3 x height and 90% of a square image cannot both hold.
  assert (
    image_ops.sample_crop_box(
      100, 100, rng, area_range=(0.9, 1.0), aspect_range=(3, 3)
    )
    is None
  )


def test_center_crop_box_and_eval_crop():
  # side = int(224 / 256 * 256) = 224; offsets (256-224+1)//2, (300-224+1)//2.
  assert image_ops.center_crop_box(
    256, 300, image_size=224, crop_padding=32
  ) == (16, 38, 224, 224)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
  top, left, h, w = image_ops.center_crop_box(
    37, 45, image_size=16, crop_padding=4
  )
  crop = image[top : top + h, left : left + w].astype(np.float32)
  expected = tasks.resize_bicubic(crop, (16, 16))
  out = image_ops.center_crop({'image': image}, image_size=16, crop_padding=4)
  assert out['image'].dtype == np.float32
  np.testing.assert_allclose(out['image'], expected, atol=2e-3)
  # The colab's crop-and-resize on float pixels: the same box and weights.
  colab = tasks.center_crop_and_resize(image.astype(np.float32), 16, 4)
  np.testing.assert_allclose(out['image'], colab, atol=2e-3)


def test_inception_crop_fallback_is_center_crop():
  image = np.arange(64 * 64 * 3, dtype=np.int64).reshape(64, 64, 3)
  image = (image % 251).astype(np.uint8)
  kw = dict(image_size=224, crop_padding=32)
  # Impossible boxes, and the whole image, both give the central 56 x 56.
  for area, aspect in (((0.9, 1.0), (3, 3)), ((1.0, 1.0), (1, 1))):
    out = image_ops.inception_crop(
      {'image': image},
      np.random.default_rng(0),
      area_range=area,
      aspect_range=aspect,
      **kw,
    )
    np.testing.assert_array_equal(out['image'], image[4:60, 4:60])


def test_inception_crop_is_a_window_of_the_image():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  out = image_ops.inception_crop({'image': image, 'label': 1}, rng)['image']
  h, w = out.shape[:2]
  found = [
    (y, x)
    for y in range(40 - h + 1)
    for x in range(50 - w + 1)
    if np.array_equal(image[y : y + h, x : x + w], out)
  ]
  assert found


def test_random_flip():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  flips = 0
  for seed in range(200):
    out = image_ops.random_flip({'image': image}, np.random.default_rng(seed))
    if np.array_equal(out['image'], image[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out['image'], image)
  assert 70 < flips < 130


def test_resize_keeps_overshoots():
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, 4:] = 255
  out = image_ops.resize({'image': image}, image_size=20)['image']
  assert out.shape == (20, 20, 3) and out.dtype == np.float32
  assert out.min() < 0 and out.max() > 255  # bicubic ringing, not clamped
  np.testing.assert_allclose(
    out, tasks.resize_bicubic(image.astype(np.float32), (20, 20)), atol=2e-3
  )


@pytest.mark.parametrize('shape,size', [((37, 45, 3), 16), ((9, 30, 1), 24)])
def test_resize_bicubic_matches_reference(shape, size):
  image = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
  out = image_ops.resize_bicubic(image, size)
  assert out.shape == (size, size, shape[2]) and out.dtype == np.float32
  reference = tasks.resize_bicubic(image.astype(np.float64), (size, size))
  np.testing.assert_allclose(out, reference, atol=2e-3)


def test_normalize():
  mean = np.asarray(tasks.IMAGENET_MEAN_RGB)
  std = np.asarray(tasks.IMAGENET_STD_RGB)
  image = np.stack([mean, mean + std, mean - 2 * std]).reshape(1, 3, 3)
  out = image_ops.normalize({'image': image.astype(np.float32)})['image']
  np.testing.assert_allclose(
    out[0], [[0, 0, 0], [1, 1, 1], [-2, -2, -2]], atol=1e-5
  )
  out = image_ops.normalize(
    {'image': np.full((1, 1, 3), 10, np.uint8)}, mean=(4, 4, 4), std=(2, 3, 6)
  )['image']
  np.testing.assert_allclose(out[0, 0], [3, 2, 1])
