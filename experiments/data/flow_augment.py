"""Training augmentation of flow pairs, as RAFT (Teed & Deng 2020) and
AutoFlow train: photometric jitter, occluding erasures, random scaling and
stretching, flips and a random crop.

Shapes: H, W input size; h, w crop size; flow channel 0 is u (along x), 1 is
v (along y), pixels.

Each op is `op(record, rng, **cfg) -> record` on records {'frame1',
'frame2': uint8 [H, W, 3], 'flow': float32 [H, W, 2], 'valid': bool
[H, W]}; every random choice comes from `rng` (a `np.random.Generator`).
Geometric ops move the flow with the pixels and change its values with the
geometry: a horizontal flip negates u, a vertical flip negates v, scaling x
by s multiplies u by s.
"""

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from perceiver.train import data as data_lib

Record = Dict[str, np.ndarray]


def _check_prob(name: str, p: float) -> None:
  if not 0.0 <= p <= 1.0:
    raise ValueError(f'{name}: expected a probability in [0, 1], got {p!r}.')


def hflip(record: Record) -> Record:
  """Mirrors left-right: pixels and flow mirrored, u negated."""
  flow = record['flow'][:, ::-1] * np.array([-1.0, 1.0], np.float32)
  return {
    'frame1': record['frame1'][:, ::-1].copy(),
    'frame2': record['frame2'][:, ::-1].copy(),
    'flow': flow.astype(np.float32),
    'valid': record['valid'][:, ::-1].copy(),
  }


def vflip(record: Record) -> Record:
  """Mirrors top-bottom: pixels and flow mirrored, v negated."""
  flow = record['flow'][::-1] * np.array([1.0, -1.0], np.float32)
  return {
    'frame1': record['frame1'][::-1].copy(),
    'frame2': record['frame2'][::-1].copy(),
    'flow': flow.astype(np.float32),
    'valid': record['valid'][::-1].copy(),
  }


def random_flip(
  record: Record, rng: np.random.Generator, *, h_prob: float, v_prob: float
) -> Record:
  """`hflip` with probability h_prob, then `vflip` with probability v_prob
  (RAFT: 0.5 and 0.1)."""
  _check_prob('h_prob', h_prob)
  _check_prob('v_prob', v_prob)
  if rng.random() < h_prob:
    record = hflip(record)
  if rng.random() < v_prob:
    record = vflip(record)
  return record


def resize(record: Record, size: Tuple[int, int]) -> Record:
  """Bilinear resize of a pair to `size` = (h, w), flow rescaled.

  Pixel centres are aligned (x' + 0.5 = (x + 0.5) w / W). The flow is
  interpolated from valid pixels only (normalised by the interpolated
  validity) and multiplied by (w / W, h / H); an output pixel is valid when
  every input pixel it interpolates is valid.

  Raises:
    ValueError: on a non-positive size.
  """
  h, w = int(size[0]), int(size[1])
  if h <= 0 or w <= 0:
    raise ValueError(f'size: expected positive (h, w), got {size!r}.')
  height, width = record['valid'].shape
  sy, sx = h / height, w / width
  ys = (np.arange(h) + 0.5) / sy - 0.5
  xs = (np.arange(w) + 0.5) / sx - 0.5
  grid = np.meshgrid(ys, xs, indexing='ij')

  def sample(channel):
    return ndimage.map_coordinates(channel, grid, order=1, mode='nearest')

  def image(x):
    out = np.stack([sample(x[..., c].astype(np.float64)) for c in range(3)], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

  valid = record['valid'].astype(np.float64)
  weight = sample(valid)
  flow = (
    np.stack([sample(record['flow'][..., c] * valid) for c in range(2)], -1)
    / np.maximum(weight, 1e-12)[..., None]
  )
  new_valid = weight > 1 - 1e-6
  flow = np.where(new_valid[..., None], flow * np.array([sx, sy]), 0.0)
  return {
    'frame1': image(record['frame1']),
    'frame2': image(record['frame2']),
    'flow': flow.astype(np.float32),
    'valid': new_valid,
  }


def crop(record: Record, top: int, left: int, size: Tuple[int, int]) -> Record:
  """The window [top, top + h) x [left, left + w) of every array."""
  h, w = size
  height, width = record['valid'].shape
  if not (0 <= top <= height - h and 0 <= left <= width - w):
    raise ValueError(
      f'crop: a {h} x {w} window at ({top}, {left}) does not fit in '
      f'{height} x {width}.'
    )
  return {k: v[top : top + h, left : left + w] for k, v in record.items()}


def random_scale_crop(
  record: Record,
  rng: np.random.Generator,
  *,
  crop_size: Tuple[int, int],
  min_log2_scale: float = -0.2,
  max_log2_scale: float = 0.6,
  spatial_prob: float = 0.8,
  stretch_prob: float = 0.8,
  max_log2_stretch: float = 0.2,
  margin: int = 8,
) -> Record:
  """RAFT's spatial augmentation: random scaling, then a random crop.

  With probability `spatial_prob` the pair is resized by 2^U(min, max) on
  both axes, times 2^U(-s, s) per axis with probability `stretch_prob`;
  each axis is scaled at least enough to leave `margin` pixels around the
  crop (RAFT's rule, applied also when no scaling is drawn so that small
  inputs still yield a crop). Then a uniformly placed `crop_size` window.

  Args:
    record: a pair.
    rng: the randomness.
    crop_size: (h, w) of the output.
    min_log2_scale, max_log2_scale: range of the log2 scale.
    spatial_prob: probability of scaling.
    stretch_prob: probability of a different scale per axis.
    max_log2_stretch: largest log2 ratio of the two axes' scales / 2.
    margin: pixels the scaled pair must exceed the crop by.

  Returns:
    The record cropped to crop_size.
  """
  _check_prob('spatial_prob', spatial_prob)
  _check_prob('stretch_prob', stretch_prob)
  if min_log2_scale > max_log2_scale:
    raise ValueError(
      'min_log2_scale: expected at most max_log2_scale='
      f'{max_log2_scale}, got {min_log2_scale}.'
    )
  ch, cw = int(crop_size[0]), int(crop_size[1])
  height, width = record['valid'].shape
  floor_y = (ch + margin) / height
  floor_x = (cw + margin) / width
  scale_y = scale_x = 1.0
  if rng.random() < spatial_prob:
    scale = 2.0 ** rng.uniform(min_log2_scale, max_log2_scale)
    scale_x = scale_y = scale
    if rng.random() < stretch_prob:
      scale_x *= 2.0 ** rng.uniform(-max_log2_stretch, max_log2_stretch)
      scale_y *= 2.0 ** rng.uniform(-max_log2_stretch, max_log2_stretch)
  scale_x, scale_y = max(scale_x, floor_x), max(scale_y, floor_y)
  if (scale_x, scale_y) != (1.0, 1.0):
    record = resize(
      record, (int(np.ceil(height * scale_y)), int(np.ceil(width * scale_x)))
    )
  height, width = record['valid'].shape
  top = int(rng.integers(0, height - ch + 1))
  left = int(rng.integers(0, width - cw + 1))
  return crop(record, top, left, (ch, cw))


def shift_hue(image: np.ndarray, turns: float) -> np.ndarray:
  """uint8 RGB [H, W, 3] with its hue rotated by `turns` (a fraction of the
  colour wheel), as torchvision's `adjust_hue` does on the PIL images RAFT
  jitters: Pillow's 8-bit HSV, the hue channel shifted by int(turns x 255)
  modulo 256, back to RGB (greys are unchanged)."""
  hsv = np.array(Image.fromarray(image, 'RGB').convert('HSV'))
  hsv[..., 0] += np.uint8(int(turns * 255) % 256)  # wraps modulo 256
  return np.array(Image.fromarray(hsv, 'HSV').convert('RGB'))


def _jitter(image: np.ndarray, b: float, c: float, s: float, h: float):
  """Brightness, contrast, saturation (factors) on float RGB in [0, 255],
  as torchvision's ColorJitter defines them, rounded to uint8; then the hue
  rotation (turns) of `shift_hue`."""
  x = np.clip(image * b, 0, 255)
  gray = x @ np.array([0.299, 0.587, 0.114])
  x = np.clip((x - gray.mean()) * c + gray.mean(), 0, 255)
  gray = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
  x = np.clip((x - gray) * s + gray, 0, 255)
  x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
  return shift_hue(x, h) if h else x


def photometric_jitter(
  record: Record,
  rng: np.random.Generator,
  *,
  brightness: float = 0.4,
  contrast: float = 0.4,
  saturation: float = 0.4,
  hue: float = 0.5 / np.pi,
  asymmetric_prob: float = 0.2,
) -> Record:
  """RAFT's colour jitter: factors 1 + U(-x, x) for brightness, contrast and
  saturation, a hue shift U(-hue, hue) turns; one draw for both frames
  (applied, as RAFT does, to the two frames stacked into one image, so
  contrast pivots on their common mean grey), or one per frame with
  probability `asymmetric_prob`. Flow and validity are unchanged."""
  _check_prob('asymmetric_prob', asymmetric_prob)
  for name, value in (
    ('brightness', brightness),
    ('contrast', contrast),
    ('saturation', saturation),
    ('hue', hue),
  ):
    if value < 0:
      raise ValueError(f'{name}: expected a non-negative number, got {value}.')

  def draw():
    return (
      1 + rng.uniform(-brightness, brightness),
      1 + rng.uniform(-contrast, contrast),
      1 + rng.uniform(-saturation, saturation),
      rng.uniform(-hue, hue),
    )

  first = draw()
  out = dict(record)
  if rng.random() < asymmetric_prob:
    out['frame1'] = _jitter(record['frame1'].astype(np.float64), *first)
    out['frame2'] = _jitter(record['frame2'].astype(np.float64), *draw())
    return out
  stacked = np.concatenate([record['frame1'], record['frame2']], 0)
  both = _jitter(stacked.astype(np.float64), *first)
  height = record['frame1'].shape[0]
  out['frame1'], out['frame2'] = both[:height], both[height:]
  return out


def random_erase(
  record: Record,
  rng: np.random.Generator,
  *,
  prob: float = 0.5,
  max_boxes: int = 2,
  box_range: Tuple[int, int] = (50, 100),
) -> Record:
  """RAFT's occlusion augmentation: with probability `prob`, 1..max_boxes
  boxes of frame 2 (sides U[box_range)) are filled with frame 2's mean
  colour. The flow is unchanged (the boxes simulate occluders)."""
  _check_prob('prob', prob)
  if rng.random() >= prob:
    return record
  frame2 = record['frame2'].copy()
  mean = frame2.reshape(-1, 3).mean(0)
  height, width = frame2.shape[:2]
  for _ in range(int(rng.integers(1, max_boxes + 1))):
    x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
    dx, dy = rng.integers(box_range[0], box_range[1], 2)
    frame2[y0 : y0 + dy, x0 : x0 + dx] = np.rint(mean).astype(np.uint8)
  return dict(record, frame2=frame2)


def at_severity(
  record: Record,
  rng: np.random.Generator,
  *,
  op,
  severity,
  scaled: Tuple[str, ...],
  progress,
  **ranges,
) -> Record:
  """`op(record, rng, **ranges)` with the ranges named in `scaled`
  multiplied by `severity(progress.fraction)`: an augmentation curriculum
  (AutoFlow's "increases augmentation severity over time"; the factor is
  our schedule, see `autoflow.Curriculum`). At severity 0 the scaled ranges
  and probabilities are 0 (no jitter, no erasing, no scaling), at 1 they
  are as given.

  Args:
    record, rng: as for `op`.
    op: one of this module's ops.
    severity: fraction of training -> factor in [0, 1] (picklable, e.g. a
      `Curriculum.severity`).
    scaled: the keywords of `ranges` to scale.
    progress: the engine's `perceiver.train.data.Progress`.
    **ranges: `op`'s keywords at full severity.

  Raises:
    ValueError: a name in `scaled` that is not in `ranges`.
  """
  missing = sorted(set(scaled) - set(ranges))
  if missing:
    raise ValueError(
      f'scaled: expected keywords of {getattr(op, "__name__", op)} among '
      f'{sorted(ranges)}, got {missing}.'
    )
  factor = float(severity(progress.fraction))
  return op(
    record,
    rng,
    **{k: v * factor if k in scaled else v for k, v in ranges.items()},
  )


# The ranges of each op that an augmentation curriculum's severity scales
# (`at_severity`); flips are symmetries, not a strength: never scaled.
SEVERITY_SCALED = {
  photometric_jitter: (
    'brightness',
    'contrast',
    'saturation',
    'hue',
    'asymmetric_prob',
  ),
  random_erase: ('prob',),
  random_scale_crop: (
    'min_log2_scale',
    'max_log2_scale',
    'spatial_prob',
    'stretch_prob',
    'max_log2_stretch',
  ),
}
# `raft_ops`' keyword -> (op, the op's keyword).
RAFT_RANGES = {
  'brightness': (photometric_jitter, 'brightness'),
  'contrast': (photometric_jitter, 'contrast'),
  'saturation': (photometric_jitter, 'saturation'),
  'hue': (photometric_jitter, 'hue'),
  'asymmetric_prob': (photometric_jitter, 'asymmetric_prob'),
  'erase_prob': (random_erase, 'prob'),
  'min_log2_scale': (random_scale_crop, 'min_log2_scale'),
  'max_log2_scale': (random_scale_crop, 'max_log2_scale'),
  'spatial_prob': (random_scale_crop, 'spatial_prob'),
  'stretch_prob': (random_scale_crop, 'stretch_prob'),
  'max_log2_stretch': (random_scale_crop, 'max_log2_stretch'),
  'h_flip_prob': (random_flip, 'h_prob'),
  'v_flip_prob': (random_flip, 'v_prob'),
}


def raft_ops(
  crop_size: Tuple[int, int],
  *,
  severity: Optional[Callable[[float], float]] = None,
  **ranges: float,
) -> List[data_lib.RandomMap]:
  """RAFT's training augmentation as engine ops, in RAFT's order: colour
  jitter, erasing, scaling and stretching with the `crop_size` crop
  (`margin` 8, or 0 when `spatial_prob` is 0), flips.

  Args:
    crop_size: (h, w) of the crop.
    severity: None (every range as given), or fraction of training ->
      factor in [0, 1] (e.g. `autoflow.Curriculum.severity`): each op's
      `SEVERITY_SCALED` ranges are multiplied by it at each record's
      training progress (`at_severity`).
    **ranges: every keyword of `RAFT_RANGES` (the flow experiment's
      `data.*` names), each passed to its op.

  Returns:
    Four `perceiver.train.data.RandomMap`s (picklable).

  Raises:
    ValueError: `ranges` missing a keyword of `RAFT_RANGES` or naming
      another.
  """
  missing = sorted(set(RAFT_RANGES) - set(ranges))
  unknown = sorted(set(ranges) - set(RAFT_RANGES))
  if missing or unknown:
    raise ValueError(
      f'ranges: expected exactly the keywords {sorted(RAFT_RANGES)}, got '
      f'{missing} missing and {unknown} unknown.'
    )
  per_op = {  # RAFT's order
    photometric_jitter: {},
    random_erase: {},
    random_scale_crop: dict(
      crop_size=tuple(crop_size),
      margin=0 if ranges['spatial_prob'] == 0 else 8,
    ),
    random_flip: {},
  }
  for name, (op, keyword) in RAFT_RANGES.items():
    per_op[op][keyword] = ranges[name]

  def make(op, kwargs):
    if severity is None or op not in SEVERITY_SCALED:
      return data_lib.RandomMap(op, **kwargs)
    return data_lib.RandomMap(
      at_severity,
      op=op,
      severity=severity,
      scaled=SEVERITY_SCALED[op],
      **kwargs,
    )

  return [make(op, kwargs) for op, kwargs in per_op.items()]
