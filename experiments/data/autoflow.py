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
from typing import Dict, Optional, Tuple

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


class AutoFlowGenerator:
  """A grain random-access source of procedural pairs, deterministic in
  (index, seed).

  Records: {'frame1', 'frame2': uint8 [H, W, 3], 'flow': float32 [H, W, 2],
  'valid': bool [H, W] (all True: the flow is known everywhere)}.
  """

  def __init__(
    self,
    num_pairs: int,
    *,
    size: Tuple[int, int] = (368, 496),
    seed: int = 0,
    max_layers: int = 4,
    max_motion: float = 20.0,
    max_rotation_deg: float = 10.0,
    max_log_scale: float = 0.1,
    max_shear: float = 0.05,
    background_motion: float = 0.5,
    texture_zoom: Tuple[float, float] = (0.75, 2.5),
    min_radius: float = 0.08,
    max_radius: float = 0.35,
    vertices: Tuple[int, int] = (3, 9),
    textures_path: Optional[str] = None,
  ):
    """Describes the distribution.

    Args:
      num_pairs: the number of records (indices 0..num_pairs-1).
      size: (H, W) of the frames.
      seed: with the index, fixes every random choice of a record.
      max_layers: the most polygons over the background (at least 1).
      max_motion: largest translation of a layer, pixels per axis.
      max_rotation_deg: largest rotation of a layer, degrees.
      max_log_scale: layer scaling exp(U(-s, s)) per axis.
      max_shear: largest shear factor.
      background_motion: the background moves like a layer with its motion
        scaled by this factor (0: static camera).
      texture_zoom: range of the texture magnification (texture pixels per
        frame pixel are its inverse).
      min_radius, max_radius: polygon radii as fractions of min(H, W).
      vertices: (fewest, most) polygon vertices.
      textures_path: an .npz of uint8 [h, w, 3] images (default: vendored).

    Raises:
      ValueError: on a non-positive count or size, or inconsistent ranges.
    """
    if not isinstance(num_pairs, int) or num_pairs <= 0:
      raise ValueError(
        f'num_pairs: expected a positive integer, got {num_pairs!r}.'
      )
    if len(size) != 2 or min(size) < 8:
      raise ValueError(f'size: expected (H, W) of at least 8, got {size!r}.')
    if not isinstance(max_layers, int) or max_layers < 1:
      raise ValueError(
        f'max_layers: expected an integer >= 1, got {max_layers!r}.'
      )
    if not 0 < min_radius <= max_radius:
      raise ValueError(
        'min_radius, max_radius: expected 0 < min_radius <= max_radius, got '
        f'{min_radius}, {max_radius}.'
      )
    if not 3 <= vertices[0] <= vertices[1]:
      raise ValueError(
        f'vertices: expected 3 <= fewest <= most, got {vertices!r}.'
      )
    if not 0 < texture_zoom[0] <= texture_zoom[1]:
      raise ValueError(
        f'texture_zoom: expected 0 < low <= high, got {texture_zoom!r}.'
      )
    self.num_pairs = num_pairs
    self.size = tuple(int(s) for s in size)
    self.seed = seed
    self.max_layers = max_layers
    self.max_motion = float(max_motion)
    self.max_rotation = np.deg2rad(max_rotation_deg)
    self.max_log_scale = float(max_log_scale)
    self.max_shear = float(max_shear)
    self.background_motion = float(background_motion)
    self.texture_zoom = tuple(texture_zoom)
    self.radii = (float(min_radius), float(max_radius))
    self.vertices = tuple(vertices)
    self.textures_path = textures_path
    load_textures(textures_path)  # fail early on a bad file

  def __len__(self) -> int:
    return self.num_pairs

  def __getitem__(self, index: int) -> Record:
    out = self.render(index)
    del out['occluded']
    return out

  def _motion(self, rng, centre, factor: float = 1.0) -> np.ndarray:
    angle = factor * rng.uniform(-self.max_rotation, self.max_rotation)
    scale = np.exp(
      factor * rng.uniform(-self.max_log_scale, self.max_log_scale, 2)
    )
    shear = factor * rng.uniform(-self.max_shear, self.max_shear)
    shift = factor * rng.uniform(-self.max_motion, self.max_motion, 2)
    return _affine(angle, scale, shear, shift, centre)

  def _texture_map(self, rng, texture: np.ndarray) -> np.ndarray:
    """Frame-1 (x, y) -> texture (x, y): random rotation, zoom, offset."""
    th, tw = texture.shape[:2]
    zoom = rng.uniform(*self.texture_zoom)
    angle = rng.uniform(-np.pi, np.pi)
    centre = np.array([self.size[1], self.size[0]]) / 2
    target = rng.uniform([0, 0], [tw, th])
    return _affine(angle, (1 / zoom, 1 / zoom), 0.0, target - centre, centre)

  def _polygon(self, rng) -> np.ndarray:
    """[V, 2] (x, y) vertices of a random star-shaped polygon."""
    h, w = self.size
    n = rng.integers(self.vertices[0], self.vertices[1] + 1)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(*self.radii, n) * min(h, w)
    centre = rng.uniform([0, 0], [w, h])
    return centre + radii[:, None] * np.stack(
      [np.cos(angles), np.sin(angles)], -1
    )

  def render(self, index: int) -> Record:
    """Record `index` plus 'occluded': bool [H, W], True where the frame-1
    pixel's point is hidden in frame 2 or leaves the image.

    Raises:
      IndexError: index outside [0, num_pairs).
    """
    index = int(index)
    if not 0 <= index < self.num_pairs:
      raise IndexError(
        f'index: expected an integer in [0, {self.num_pairs}), got {index}.'
      )
    rng = np.random.default_rng([self.seed, index])
    textures = load_textures(self.textures_path)
    h, w = self.size
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    num_polygons = int(rng.integers(1, self.max_layers + 1))

    # Layer 0 is the background: it covers the whole plane.
    layers = []
    centre = np.array([w, h], np.float64) / 2
    for k in range(num_polygons + 1):
      texture = textures[rng.integers(len(textures))]
      to_texture = self._texture_map(rng, texture)
      if k == 0:
        polygon = None
        motion = self._motion(rng, centre, self.background_motion)
      else:
        polygon = self._polygon(rng)
        motion = self._motion(rng, polygon.mean(0))
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


def _sample(texture: np.ndarray, to_texture: np.ndarray, x, y) -> np.ndarray:
  """Bilinear [n, 3] samples of `texture` at to_texture(x, y), mirrored at
  its borders (so the texture covers the plane)."""
  tx, ty = _apply(to_texture, x, y)
  return np.stack(
    [
      ndimage.map_coordinates(
        texture[..., c].astype(np.float64), [ty, tx], order=1, mode='mirror'
      )
      for c in range(3)
    ],
    -1,
  )
