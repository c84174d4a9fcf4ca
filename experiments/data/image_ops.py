"""Per-record image ops of the released ImageNet recipe (the released
`train/dataset.py` preprocessing, Perceiver IO App. A).

Training: `inception_crop` -> `random_flip` -> `randaugment.randaugment`
(uint8, on the crop at its own size, as released) -> `resize` (bicubic, to
float32 without clamping) -> `normalize`. Evaluation: `center_crop` (the
central square of side image_size / (image_size + crop_padding) times the
shorter side, i.e. 224/256, bicubic-resized) -> `normalize`.

Each op is `op(record, **cfg)` or, when random, `op(record, rng, **cfg)`
with every random draw taken from `rng`; records are dicts whose 'image'
entry the op replaces (other entries pass through).

Bicubic resizing uses the weights of `perceiver.tasks.cubic_resize_matrix`
(Keys' kernel with a = -0.75 and edge replication, like OpenCV and the
released colab); the released training code used TF's bicubic (a = -0.5),
a small difference in the interpolation weights.

Shapes: H, W input height and width; h, w crop height and width; S output
size (image_size); images [., ., 3] RGB.
"""

import functools
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from perceiver import tasks

Record = Dict[str, np.ndarray]
Box = Tuple[int, int, int, int]  # top, left, height, width


def sample_crop_box(
  height: int,
  width: int,
  rng: np.random.Generator,
  *,
  area_range: Sequence[float] = (0.08, 1.0),
  aspect_range: Sequence[float] = (3 / 4, 4 / 3),
  min_object_covered: float = 0.1,
  attempts: int = 10,
) -> Optional[Box]:
  """A random crop as `tf.image.sample_distorted_bounding_box` draws it.

  The whole image is the bounding box, as released. Per attempt: aspect
  ratio a ~ U(aspect_range); crop height uniform over the integers from
  round(sqrt(min_area / a)) to round(sqrt(max_area / a)) (capped so the
  width round(h a) fits and h <= height), with one step up if the area is
  below min_area; the crop must have area in [min_area, max_area] (pixel
  counts area_range x height x width) and cover at least
  `min_object_covered` of the image; its corner is then uniform.

  Args:
    height, width: the image size in pixels.
    rng: the random generator.
    area_range: (min, max) crop area as a fraction of the image area.
    aspect_range: (min, max) crop width / height.
    min_object_covered: least fraction of the image the crop must cover.
    attempts: draws before giving up.

  Returns:
    (top, left, h, w), or None if every attempt failed.
  """
  image_area = height * width
  min_area = area_range[0] * image_area
  max_area = area_range[1] * image_area
  for _ in range(attempts):
    aspect = rng.uniform(aspect_range[0], aspect_range[1])
    h_min = round(math.sqrt(min_area / aspect))
    h_max = round(math.sqrt(max_area / aspect))
    if round(h_max * aspect) > width:
      h_max = int((width + 0.5 - 1e-7) / aspect)
      if round(h_max * aspect) > width:
        h_max -= 1
    h_max = min(h_max, height)
    h = min(h_min, h_max)
    if h < h_max:
      h += int(rng.integers(h_max - h + 1))
    w = round(h * aspect)
    if w * h < min_area:
      h += 1
      w = round(h * aspect)
    area = w * h
    if not (
      min_area <= area <= max_area
      and 0 < w <= width
      and 0 < h <= height
      and area >= min_object_covered * image_area
    ):
      continue
    top = int(rng.integers(height - h + 1))
    left = int(rng.integers(width - w + 1))
    return top, left, h, w
  return None


def center_crop_box(
  height: int, width: int, *, image_size: int, crop_padding: int
) -> Box:
  """The released (and colab) central square: side
  int(image_size / (image_size + crop_padding) * min(height, width)),
  offsets ((height - side + 1) // 2, (width - side + 1) // 2).

  The same box `perceiver.tasks.center_crop_and_resize` crops (a test
  checks it); the training fallback needs the box before resizing.
  """
  ratio = np.float32(image_size / (image_size + crop_padding))
  side = int(ratio * np.float32(min(height, width)))
  return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def inception_crop(
  record: Record,
  rng: np.random.Generator,
  *,
  area_range: Sequence[float] = (0.08, 1.0),
  aspect_range: Sequence[float] = (3 / 4, 4 / 3),
  attempts: int = 10,
  image_size: int = 224,
  crop_padding: int = 32,
) -> Record:
  """Inception-style random crop (Szegedy et al. 2015), as released.

  A box from `sample_crop_box` (min_object_covered 0.1); when every
  attempt fails, or the box is the whole image (the released code cannot
  tell the two apart), the central `center_crop_box` is taken instead.

  Args:
    record: with 'image' uint8 [H, W, 3].
    rng: the record's generator.
    area_range, aspect_range, attempts: see `sample_crop_box`.
    image_size, crop_padding: the fallback crop (see `center_crop_box`).

  Returns:
    The record with 'image' uint8 [h, w, 3] (not yet resized).
  """
  image = record['image']
  height, width = image.shape[:2]
  box = sample_crop_box(
    height,
    width,
    rng,
    area_range=area_range,
    aspect_range=aspect_range,
    attempts=attempts,
  )
  if box is None or box[2:] == (height, width):
    box = center_crop_box(
      height, width, image_size=image_size, crop_padding=crop_padding
    )
  top, left, h, w = box
  return dict(record, image=image[top : top + h, left : left + w])


def random_flip(record: Record, rng: np.random.Generator) -> Record:
  """Mirrors the image left-right with probability 1/2."""
  if rng.random() < 0.5:
    return dict(record, image=np.ascontiguousarray(record['image'][:, ::-1]))
  return record


@functools.lru_cache(maxsize=64)
def _cubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """float32 [out, in] `tasks.cubic_resize_matrix`, cached: building it
  costs ~0.15 ms, ten times the resize of a 28 x 28 crop."""
  weights = tasks.cubic_resize_matrix(in_size, out_size).astype(np.float32)
  weights.flags.writeable = False
  return weights


def resize_bicubic(image_hwC: np.ndarray, size: int) -> np.ndarray:
  """Bicubic resize of [h, w, C] to float32 [S, S, C], values not clamped.

  The interpolation weights are `perceiver.tasks.cubic_resize_matrix`'s, so
  the result is `perceiver.tasks.resize_bicubic`'s (a test checks it to
  float32 rounding); it is computed as two float32 matrix products instead
  of float64 `einsum`, with the weights cached per (input, output) size.
  """
  h, w, channels = image_hwC.shape
  rows_Sh, cols_Sw = _cubic_weights(h, size), _cubic_weights(w, size)
  x_SwC = (rows_Sh @ image_hwC.astype(np.float32).reshape(h, -1)).reshape(
    size, w, channels
  )
  return np.matmul(cols_Sw[None], x_SwC)  # [S, S, C]


def resize(record: Record, *, image_size: int) -> Record:
  """Bicubic resize to float32 [S, S, 3], values not clamped (as released:
  overshoots such as -51 or 337 are kept)."""
  return dict(record, image=resize_bicubic(record['image'], image_size))


def center_crop(
  record: Record, *, image_size: int = 224, crop_padding: int = 32
) -> Record:
  """Evaluation crop: `center_crop_box`, bicubic-resized to float32
  [S, S, 3] without clamping (what `perceiver.tasks.center_crop_and_resize`
  computes on float pixels)."""
  image = record['image']
  top, left, h, w = center_crop_box(
    *image.shape[:2], image_size=image_size, crop_padding=crop_padding
  )
  crop = image[top : top + h, left : left + w]
  return dict(record, image=resize_bicubic(crop, image_size))


def normalize(
  record: Record,
  *,
  mean: Sequence[float] = tasks.IMAGENET_MEAN_RGB,
  std: Sequence[float] = tasks.IMAGENET_STD_RGB,
) -> Record:
  """(x - mean) / std per channel, float32; mean and std in pixel units
  (default the ImageNet RGB statistics x 255)."""
  x = record['image'].astype(np.float32)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return dict(record, image=(x - mean) / std)
