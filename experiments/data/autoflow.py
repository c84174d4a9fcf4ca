"""Procedural AutoFlow-style training pairs with exact flow.

Shapes: H, W image height and width in pixels; L layers (background
included); V polygon vertices. Flow channel 0 is u (along x), 1 is v (along
y), pixels; frame-1 pixel (x, y) moves to (x + u, y + v) in frame 2.

AutoFlow (Sun et al., CVPR 2021, Sec. 3) renders training pairs as layers
moving over a background, each layer a textured random shape with its own
random motion, composited back to front; its ground truth is the flow of the
visible layer. This is that pipeline without the learned hyper-parameters
and visual effects (motion blur, fog): a textured background and 1..L-1
random star-shaped polygons, each moved by its own random affine map
(translation, rotation, scaling, shear about the polygon's centre), with
textures from real photographs (`flow_textures.npz`, see SOURCE.md).

Rendering is exact by construction: layer k shows the texture function
t_k(p) (a photograph under a random affine map, bilinearly sampled) at its
frame-1 position p; in frame 2 the same point appears at A_k p, so frame 2
at pixel q shows t_k(A_k^-1 q) for the topmost layer whose moved polygon
covers q. The flow at frame-1 pixel p is A_k p - p for the topmost layer k
there: exact, including where p is occluded in frame 2 (see `render`'s
'occluded').
"""

import functools
import os
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
from scipy import ndimage
from skimage.draw import polygon2mask

Record = Dict[str, np.ndarray]

TEXTURES_PATH = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'flow_textures.npz'
)


@functools.lru_cache(maxsize=4)
def load_textures(path: Optional[str] = None) -> Tuple[np.ndarray, ...]:
  """The vendored photographs: a tuple of uint8 [h, w, 3] arrays.

  Raises:
    ValueError: the file is missing or holds no RGB uint8 image.
  """
  path = TEXTURES_PATH if path is None else path
  try:
    with np.load(path, allow_pickle=False) as npz:
      images = tuple(npz[k] for k in sorted(npz.files))
  except (OSError, ValueError) as e:
    raise ValueError(
      f'{path}: expected the vendored textures .npz (restore it with git '
      f'checkout): {e}'
    ) from e
  if not images or any(
    im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3 for im in images
  ):
    raise ValueError(f'{path}: expected uint8 [h, w, 3] images.')
  return images


def _affine(angle: float, scale_xy, shear: float, shift_xy, centre_xy):
  """3 x 3 map p -> R S H (p - c) + c + t on (x, y) coordinates."""
  c, s = np.cos(angle), np.sin(angle)
  rotation = np.array([[c, -s], [s, c]])
  linear = rotation @ np.diag(scale_xy) @ np.array([[1.0, shear], [0.0, 1.0]])
  m = np.eye(3)
  m[:2, :2] = linear
  m[:2, 2] = np.asarray(centre_xy) + np.asarray(shift_xy) - linear @ centre_xy
  return m


def _apply(m: np.ndarray, x: np.ndarray, y: np.ndarray):
  return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[
    1, 2
  ]


class Scene(NamedTuple):
  """Every range of the generator: one difficulty of scene.

  The defaults are the AutoFlow-style layered scene (the generator's ranges
  before the curriculum existed).

  Attributes:
    max_layers: the most polygons over the background; the count is drawn
      from 1..max_layers, and 0 leaves the background alone (one global
      motion per pair).
    max_motion: largest translation of a layer, pixels per axis.
    max_rotation_deg: largest rotation of a layer, degrees.
    max_log_scale: layer scaling exp(U(-s, s)) per axis.
    max_shear: largest shear factor.
    background_motion: the background moves like a layer with its motion
      scaled by this factor (0: static camera).
    texture_zoom: (low, high) range of the texture magnification (texture
      pixels per frame pixel are its inverse; above 1 the photographs are
      blurred, so less gradient to match).
    radii: (min, max) polygon radii as fractions of min(H, W).
    vertices: (fewest, most) polygon vertices.
  """

  max_layers: int = 4
  max_motion: float = 20.0
  max_rotation_deg: float = 10.0
  max_log_scale: float = 0.1
  max_shear: float = 0.05
  background_motion: float = 0.5
  texture_zoom: Tuple[float, float] = (0.75, 2.5)
  radii: Tuple[float, float] = (0.08, 0.35)
  vertices: Tuple[int, int] = (3, 9)


def make_scene(name: str = 'scene', **ranges) -> Scene:
  """A checked `Scene` of `ranges` (the `Scene` fields; missing ones take
  the defaults); `name` prefixes the field in errors.

  Raises:
    ValueError: an unknown field, or a range out of its domain (negative
      magnitudes, low > high, fewer than 3 vertices, ...).
  """
  unknown = sorted(set(ranges) - set(Scene._fields))
  if unknown:
    raise ValueError(
      f'{name}: expected fields among {Scene._fields}, got {unknown}.'
    )
  scene = Scene(**ranges)
  layers = scene.max_layers
  if not isinstance(layers, (int, np.integer)) or layers < 0:
    raise ValueError(
      f'{name}.max_layers: expected an integer >= 0, got {layers!r}.'
    )
  for field in (
    'max_motion',
    'max_rotation_deg',
    'max_log_scale',
    'max_shear',
    'background_motion',
  ):
    value = getattr(scene, field)
    if not value >= 0:
      raise ValueError(
        f'{name}.{field}: expected a number >= 0, got {value!r}.'
      )
  for field, low, domain in (
    ('texture_zoom', 0, '0 < low'),
    ('radii', 0, '0 < low'),
    ('vertices', 3, '3 <= low'),
  ):
    pair = tuple(getattr(scene, field))
    if len(pair) != 2 or not (
      (pair[0] > low if low == 0 else pair[0] >= low) and pair[0] <= pair[1]
    ):
      raise ValueError(
        f'{name}.{field}: expected (low, high) with {domain} <= high, got '
        f'{pair!r}.'
      )
  return scene._replace(
    max_layers=int(layers),
    texture_zoom=tuple(float(v) for v in scene.texture_zoom),
    radii=tuple(float(v) for v in scene.radii),
    vertices=tuple(int(v) for v in scene.vertices),
  )


def _round(value: float) -> int:
  """Nearest integer, halves up (an integer range interpolated)."""
  return int(np.floor(value + 0.5))


def interpolate(a: Scene, b: Scene, t: float) -> Scene:
  """The scene a fraction t in [0, 1] of the way from `a` to `b`: every
  range linear in t, integer ranges (layers, vertices) rounded to the
  nearest integer (halves up)."""
  mix = lambda x, y: (1 - t) * x + t * y
  out = {}
  for field, x, y in zip(Scene._fields, a, b):
    if field == 'max_layers':
      out[field] = _round(mix(x, y))
    elif field == 'vertices':
      out[field] = tuple(_round(mix(p, q)) for p, q in zip(x, y))
    elif isinstance(x, tuple):
      out[field] = tuple(float(mix(p, q)) for p, q in zip(x, y))
    else:
      out[field] = float(mix(x, y))
  return Scene(**out)


class Stage(NamedTuple):
  """One level of a `Curriculum`.

  Attributes:
    name: names the level (and its held-out set).
    reach: the fraction of training, in [0, 1], at which it is reached.
    scene: the generator's ranges there.
    augment: the augmentation severity there, in [0, 1] (the factor on the
      augmentation's ranges and probabilities; see
      `flow_augment.at_severity`).
  """

  name: str
  reach: float
  scene: Scene
  augment: float


class Curriculum:
  """A difficulty schedule: piecewise linear in the fraction of training
  between its stages, constant after the last.

  AutoFlow (Sun et al. 2021, Sec. 4) trains with a curriculum that raises
  the augmentation severity over time but publishes neither its generator
  nor its schedule; this schedule is ours: the scene and the severity of
  stage k at fraction `reach_k`, linear in between (see `interpolate`).
  Picklable, so it can be an op's keyword in loader workers.
  """

  def __init__(self, stages):
    """Checks and keeps `stages`.

    Args:
      stages: a non-empty sequence of `Stage`, with distinct names, the
        first reached at 0 and the reaches strictly increasing in [0, 1].

    Raises:
      ValueError: naming the stage and what is wrong.
    """
    stages = tuple(stages)
    if not stages:
      raise ValueError('stages: expected at least one stage, got none.')
    names = [s.name for s in stages]
    if len(set(names)) != len(names) or not all(names):
      raise ValueError(
        f'stages: expected distinct non-empty names, got {names}.'
      )
    reach = [float(s.reach) for s in stages]
    if reach[0] != 0.0 or any(b <= a for a, b in zip(reach, reach[1:])):
      raise ValueError(
        'stages: expected reach fractions starting at 0 and strictly '
        f'increasing, got {dict(zip(names, reach))}.'
      )
    if reach[-1] > 1.0:
      raise ValueError(
        f'stages: expected reach fractions in [0, 1], got {reach[-1]} for '
        f'{names[-1]!r}.'
      )
    for s in stages:
      if not 0.0 <= s.augment <= 1.0:
        raise ValueError(
          f'{s.name}.augment: expected a severity in [0, 1], got {s.augment!r}.'
        )
    self.stages = tuple(
      s._replace(scene=make_scene(s.name, **s.scene._asdict())) for s in stages
    )

  def at(self, fraction: float) -> Tuple[Scene, float]:
    """(scene, augmentation severity) at `fraction` of training (clipped to
    [0, 1])."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    stages = self.stages
    k = sum(s.reach <= fraction for s in stages) - 1
    if k == len(stages) - 1:
      return stages[k].scene, float(stages[k].augment)
    a, b = stages[k], stages[k + 1]
    t = (fraction - a.reach) / (b.reach - a.reach)
    severity = (1 - t) * a.augment + t * b.augment
    return interpolate(a.scene, b.scene, t), float(severity)

  def severity(self, fraction: float) -> float:
    """The augmentation severity at `fraction` of training."""
    return self.at(fraction)[1]


def _check_num_pairs(num_pairs: int) -> None:
  """Raises ValueError naming `num_pairs` unless it is a positive int."""
  if not isinstance(num_pairs, int) or num_pairs <= 0:
    raise ValueError(
      f'num_pairs: expected a positive integer, got {num_pairs!r}.'
    )


def _checked_index(index: int, num_pairs: int) -> int:
  """`index` as an int; IndexError naming it outside [0, num_pairs)."""
  index = int(index)
  if not 0 <= index < num_pairs:
    raise IndexError(
      f'index: expected an integer in [0, {num_pairs}), got {index}.'
    )
  return index


class AutoFlowGenerator:
  """A grain random-access source of procedural pairs, deterministic in
  (index, seed) and the scene's ranges.

  Records: {'frame1', 'frame2': uint8 [H, W, 3], 'flow': float32 [H, W, 2],
  'valid': bool [H, W] (all True: the flow is known everywhere)}.
  """

  def __init__(
    self,
    num_pairs: int,
    *,
    size: Tuple[int, int] = (368, 496),
    seed: int = 0,
    textures_path: Optional[str] = None,
    **scene,
  ):
    """Describes the distribution.

    Args:
      num_pairs: the number of records (indices 0..num_pairs-1).
      size: (H, W) of the frames.
      seed: with the index, fixes every random choice of a record.
      textures_path: an .npz of uint8 [h, w, 3] images (default: vendored).
      **scene: the ranges of `Scene` (defaults: the layered scene).

    Raises:
      ValueError: on a non-positive count or size, or bad ranges (see
        `make_scene`).
    """
    _check_num_pairs(num_pairs)
    if len(size) != 2 or min(size) < 8:
      raise ValueError(f'size: expected (H, W) of at least 8, got {size!r}.')
    self.num_pairs = num_pairs
    self.size = tuple(int(s) for s in size)
    self.seed = seed
    self.scene = make_scene(**scene)
    self.textures_path = textures_path
    load_textures(textures_path)  # fail early on a bad file

  def __len__(self) -> int:
    return self.num_pairs

  def __getitem__(self, index: int) -> Record:
    out = self.render(index)
    del out['occluded']
    return out

  @staticmethod
  def _motion(rng, scene: Scene, centre, factor: float = 1.0) -> np.ndarray:
    rotation = np.deg2rad(scene.max_rotation_deg)
    angle = factor * rng.uniform(-rotation, rotation)
    scale = np.exp(
      factor * rng.uniform(-scene.max_log_scale, scene.max_log_scale, 2)
    )
    shear = factor * rng.uniform(-scene.max_shear, scene.max_shear)
    shift = factor * rng.uniform(-scene.max_motion, scene.max_motion, 2)
    return _affine(angle, scale, shear, shift, centre)

  def _texture_map(self, rng, scene: Scene, texture: np.ndarray) -> np.ndarray:
    """Frame-1 (x, y) -> texture (x, y): random rotation, zoom, offset."""
    th, tw = texture.shape[:2]
    zoom = rng.uniform(*scene.texture_zoom)
    angle = rng.uniform(-np.pi, np.pi)
    centre = np.array([self.size[1], self.size[0]]) / 2
    target = rng.uniform([0, 0], [tw, th])
    return _affine(angle, (1 / zoom, 1 / zoom), 0.0, target - centre, centre)

  def _polygon(self, rng, scene: Scene) -> np.ndarray:
    """[V, 2] (x, y) vertices of a random star-shaped polygon."""
    h, w = self.size
    n = rng.integers(scene.vertices[0], scene.vertices[1] + 1)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(*scene.radii, n) * min(h, w)
    centre = rng.uniform([0, 0], [w, h])
    return centre + radii[:, None] * np.stack(
      [np.cos(angles), np.sin(angles)], -1
    )

  def render(self, index: int, scene: Optional[Scene] = None) -> Record:
    """Record `index` plus 'occluded': bool [H, W], True where the frame-1
    pixel's point is hidden in frame 2 or leaves the image.

    Args:
      index: which record.
      scene: the ranges to draw from (default: the generator's); the random
        draws depend on (seed, index) alone, so one index under two scenes
        is one scene drawn from two ranges.

    Raises:
      IndexError: index outside [0, num_pairs).
    """
    index = _checked_index(index, self.num_pairs)
    scene = self.scene if scene is None else scene
    rng = np.random.default_rng([self.seed, index])
    textures = load_textures(self.textures_path)
    h, w = self.size
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    most = scene.max_layers
    num_polygons = int(rng.integers(min(1, most), most + 1))

    # Layer 0 is the background: it covers the whole plane.
    layers = []
    centre = np.array([w, h], np.float64) / 2
    for k in range(num_polygons + 1):
      texture = textures[rng.integers(len(textures))]
      to_texture = self._texture_map(rng, scene, texture)
      if k == 0:
        polygon = None
        motion = self._motion(rng, scene, centre, scene.background_motion)
      else:
        polygon = self._polygon(rng, scene)
        motion = self._motion(rng, scene, polygon.mean(0))
      layers.append((texture, to_texture, polygon, motion))

    frame1 = np.zeros((h, w, 3))
    frame2 = np.zeros((h, w, 3))
    flow = np.zeros((h, w, 2))
    top1 = np.zeros((h, w), np.int64)  # visible layer per pixel, frame 1
    top2 = np.zeros((h, w), np.int64)  # and frame 2
    for k, (texture, to_texture, polygon, motion) in enumerate(layers):
      if polygon is None:
        cover1 = np.ones((h, w), bool)
        cover2 = cover1
      else:
        moved = np.stack(_apply(motion, polygon[:, 0], polygon[:, 1]), -1)
        # polygon2mask takes (row, col) vertices.
        cover1 = polygon2mask((h, w), polygon[:, ::-1])
        cover2 = polygon2mask((h, w), moved[:, ::-1])
      frame1[cover1] = _sample(texture, to_texture, xs[cover1], ys[cover1])
      mx, my = _apply(motion, xs[cover1], ys[cover1])
      flow[cover1] = np.stack([mx - xs[cover1], my - ys[cover1]], -1)
      top1[cover1] = k
      # Frame-2 pixel q shows the layer point A^-1 q.
      bx, by = _apply(np.linalg.inv(motion), xs[cover2], ys[cover2])
      frame2[cover2] = _sample(texture, to_texture, bx, by)
      top2[cover2] = k

    # Occlusion: frame-1 pixel p (layer k) lands at A_k p; it is visible if
    # that point is in the image and the topmost layer there is k.
    x2 = np.rint(xs + flow[..., 0]).astype(np.int64)
    y2 = np.rint(ys + flow[..., 1]).astype(np.int64)
    inside = (x2 >= 0) & (x2 < w) & (y2 >= 0) & (y2 < h)
    seen = np.zeros((h, w), bool)
    seen[inside] = top2[y2[inside], x2[inside]] == top1[inside]
    return {
      'frame1': np.clip(np.rint(frame1), 0, 255).astype(np.uint8),
      'frame2': np.clip(np.rint(frame2), 0, 255).astype(np.uint8),
      'flow': flow.astype(np.float32),
      'valid': np.ones((h, w), bool),
      'occluded': ~seen,
    }


class SceneIndices:
  """A grain source of `num_pairs` records {'scene_index': int64 []}: which
  pair to draw, rendered by `render_at_progress` once the training progress
  (hence the difficulty) is known. Picklable."""

  def __init__(self, num_pairs: int):
    _check_num_pairs(num_pairs)
    self.num_pairs = num_pairs

  def __len__(self) -> int:
    return self.num_pairs

  def __getitem__(self, index: int) -> Record:
    index = _checked_index(index, self.num_pairs)
    return {'scene_index': np.int64(index)}


class GeneratorSlice:
  """A grain source of the pairs [start, start + num_pairs) of a generator,
  drawn under `scene` (None: the generator's ranges). Records are the
  generator's without 'occluded'. Slices of one generator at disjoint
  index ranges are disjoint pairs by construction (the held-out pairs
  follow the training ones). Picklable.
  """

  def __init__(
    self,
    generator: AutoFlowGenerator,
    *,
    start: int,
    num_pairs: int,
    scene: Optional[Scene] = None,
  ):
    """Describes the slice.

    Args:
      generator: the pairs' generator.
      start: the generator's index of record 0 (>= 0).
      num_pairs: the number of records (> 0).
      scene: the ranges every record is drawn from (None: the
        generator's).

    Raises:
      ValueError: a negative `start`, a non-positive `num_pairs`, or
        indices past the generator's last.
    """
    _check_num_pairs(num_pairs)
    if not isinstance(start, int) or start < 0:
      raise ValueError(f'start: expected an integer >= 0, got {start!r}.')
    if start + num_pairs > len(generator):
      raise ValueError(
        f'num_pairs: expected at most {len(generator) - start} pairs from '
        f'index {start} of a generator of {len(generator)}, got {num_pairs}.'
      )
    self.generator, self.start, self.num_pairs = generator, start, num_pairs
    self.scene = scene

  def __len__(self) -> int:
    return self.num_pairs

  def __getitem__(self, index: int) -> Record:
    index = _checked_index(index, self.num_pairs)
    out = self.generator.render(self.start + index, self.scene)
    del out['occluded']
    return out


def render_at_progress(
  record: Record,
  *,
  generator: AutoFlowGenerator,
  curriculum: Curriculum,
  progress,
) -> Record:
  """The pair `record['scene_index']` of `generator` under the curriculum's
  scene at `progress.fraction` (a `perceiver.train.data.Progress`): an op
  for `perceiver.train.data.Map`, deterministic in (seed, index, fraction).

  Returns:
    A record as `AutoFlowGenerator`'s.
  """
  scene, _ = curriculum.at(progress.fraction)
  out = generator.render(int(record['scene_index']), scene)
  del out['occluded']
  return out


def _sample(texture: np.ndarray, to_texture: np.ndarray, x, y) -> np.ndarray:
  """Bilinear [n, 3] samples of `texture` at to_texture(x, y), mirrored at
  its borders (so the texture covers the plane)."""
  tx, ty = _apply(to_texture, x, y)
  return np.stack(
    [
      # uint8 in, float64 out: interpolated in double precision without
      # a float copy of the texture per call.
      ndimage.map_coordinates(
        texture[..., c], [ty, tx], order=1, mode='mirror', output=np.float64
      )
      for c in range(3)
    ],
    -1,
  )
