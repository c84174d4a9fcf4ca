"""RandAugment (Cubuk et al. 2020) as the released Perceiver IO code applies it.

The released `autoaugment.py` (TPU EfficientNet's, TensorFlow 1 with
tf.contrib / tensorflow_addons) does not install on Python 3.11.
This is the same computation on numpy, with Pillow for the geometric ops:
the same 16 operations, the same magnitude-to-argument maps and constants
(`cutout_const=40`, `translate_const=100`, fill 128), the same uint8 rounding
(float -> uint8 casts truncate, as `tf.cast` does), and the same quirks:

* `contrast` blends towards a grey of level min(H * W / 256, 255) (the
  released histogram "mean" divides the pixel count by 256), not towards the
  mean grey level; at magnitude 5 its factor is 1.0 and it is the identity.
* `posterize` keeps int(magnitude / 10 * 4) bits, fewer as the magnitude
  grows (2 bits at magnitude 5).
* `equalize` divides by 255 where Pillow's divides by 256.

Geometric ops (rotate, shear, translate) sample the nearest pixel as
tensorflow_addons' projective transform does (output pixel (x, y) reads
input pixel round(A (x, y) + t), pixels outside the image get the fill);
Pillow rounds exact half-pixel ties up where TF rounds them away from zero,
which can move a border pixel by one at such ties.

Each layer applies one of the 16 operations chosen uniformly; every layer's
operation is always applied (the released code draws a probability and
discards it).

Shapes: H, W image height and width in pixels; images are uint8 [H, W, 3].
"""

from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image

MAX_LEVEL = 10.0
CUTOUT_CONST = 40
TRANSLATE_CONST = 100
FILL = 128
OPS = (
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Cutout',
  'SolarizeAdd',
)
_GREY_WEIGHTS = np.asarray([0.2989, 0.5870, 0.1140], np.float32)  # TF's


def _to_uint8(x: np.ndarray) -> np.ndarray:
  """float -> uint8 by truncation towards zero, as `tf.cast` does."""
  return np.trunc(x).astype(np.uint8)


def blend(image1: np.ndarray, image2: np.ndarray, factor: float) -> np.ndarray:
  """image1 + factor (image2 - image1) in float32, truncated to uint8.

  factor 0 gives image1 and 1 gives image2; between them the result is an
  interpolation, outside it an extrapolation clipped to [0, 255].
  """
  if factor == 0.0:
    return image1
  if factor == 1.0:
    return image2
  x1 = image1.astype(np.float32)
  out = x1 + np.float32(factor) * (image2.astype(np.float32) - x1)
  return _to_uint8(np.clip(out, 0.0, 255.0))


def grayscale(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [H, W, 1] as `tf.image.rgb_to_grayscale`:
  trunc(255.5 * sum_c w_c x_c / 255), w = (0.2989, 0.5870, 0.1140)."""
  x = image.astype(np.float32) * np.float32(1.0 / 255.0)
  grey = x @ _GREY_WEIGHTS
  return _to_uint8(grey * np.float32(255.5))[..., None]


def autocontrast(image: np.ndarray) -> np.ndarray:
  """Per channel, maps [min, max] linearly onto [0, 255] (if max > min)."""
  out = image.copy()
  for c in range(image.shape[-1]):
    channel = image[..., c].astype(np.float32)
    lo, hi = channel.min(), channel.max()
    if hi > lo:
      scale = np.float32(255.0) / (hi - lo)
      offset = -lo * scale
      out[..., c] = _to_uint8(np.clip(channel * scale + offset, 0.0, 255.0))
  return out


def equalize(image: np.ndarray) -> np.ndarray:
  """Per-channel histogram equalisation (the released `equalize`).

  With the channel's histogram h and the count s of all but the last
  non-empty bin, step = s // 255; the lookup table is
  lut[0] = 0, lut[v] = (sum_{u<v} h[u] + step // 2) // step, clipped to 255;
  a channel with step 0 is unchanged.
  """
  out = image.copy()
  for c in range(image.shape[-1]):
    channel = image[..., c]
    histo = np.bincount(channel.ravel(), minlength=256)
    nonzero = histo[histo > 0]
    step = (int(nonzero.sum()) - int(nonzero[-1])) // 255
    if step:
      lut = (np.cumsum(histo) + step // 2) // step
      lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)
      out[..., c] = lut[channel].astype(np.uint8)
  return out


def invert(image: np.ndarray) -> np.ndarray:
  """255 - x."""
  return 255 - image


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
  """Keeps the `bits` high bits of every value (0 <= bits <= 8)."""
  return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(image: np.ndarray, threshold: int = 128) -> np.ndarray:
  """Inverts values >= threshold."""
  return np.where(image < threshold, image, 255 - image)


def solarize_add(
  image: np.ndarray, addition: int, threshold: int = 128
) -> np.ndarray:
  """Adds `addition` (clipped to [0, 255]) to values below threshold."""
  added = np.clip(image.astype(np.int64) + addition, 0, 255).astype(np.uint8)
  return np.where(image < threshold, added, image)


def color(image: np.ndarray, factor: float) -> np.ndarray:
  """Blends from the image's grey version (0) to the image (1)."""
  if factor == 1.0:
    return image
  return blend(np.repeat(grayscale(image), 3, axis=-1), image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
  """Blends from a flat grey of level min(H * W / 256, 255) (the released
  histogram arithmetic; see the module docstring) to the image."""
  level = min(image.shape[0] * image.shape[1] / 256.0, 255.0)
  degenerate = np.full_like(image, _to_uint8(np.float32(level)))
  return blend(degenerate, image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
  """Blends from black (0) to the image (1)."""
  return blend(np.zeros_like(image), image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
  """Blends from a smoothed image (0) to the image (1).

  The smoothed image is the 3x3 filter [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
  over the interior pixels ('VALID', truncated to uint8); border pixels stay
  as they are. The filter sum is computed exactly (integers) before the
  division, where TF sums float32 products: a difference only for sums
  within float32 rounding of an integer.
  """
  h, w = image.shape[:2]
  if h < 3 or w < 3 or factor == 1.0:  # factor 1 (magnitude 5) is the image
    return image
  x = image.astype(np.uint16)  # sums up to 13 * 255
  total = 4 * x[1:-1, 1:-1]  # centre weight 5 = 4 + the 1 of the 3x3 sum
  for dy in range(3):
    for dx in range(3):
      total = total + x[dy : dy + h - 2, dx : dx + w - 2]
  smooth = image.copy()
  smooth[1:-1, 1:-1] = (total // 13).astype(np.uint8)
  return blend(smooth, image, factor)


def _affine(image: np.ndarray, a, t, fill: int) -> np.ndarray:
  """Output pixel (x, y) = input pixel round(a @ (x, y) + t), else fill.

  `a` is the 2x2 matrix ((a00, a01), (a10, a11)) and t = (tx, ty) in pixel
  index units (x along the width). Pillow samples input coordinate
  a @ (x + 1/2, y + 1/2) + c and floors it, so c = t + 1/2 - a @ (1/2, 1/2).
  """
  (a00, a01), (a10, a11) = a
  cx = t[0] + 0.5 - 0.5 * (a00 + a01)
  cy = t[1] + 0.5 - 0.5 * (a10 + a11)
  out = Image.fromarray(image).transform(
    (image.shape[1], image.shape[0]),
    Image.Transform.AFFINE,
    (a00, a01, cx, a10, a11, cy),
    resample=Image.Resampling.NEAREST,
    fillcolor=(fill,) * 3,
  )
  return np.asarray(out)


def rotate(image: np.ndarray, degrees: float, fill: int = FILL) -> np.ndarray:
  """Rotates counter-clockwise (as displayed) about the image centre."""
  theta = np.deg2rad(degrees)
  cos, sin = np.cos(theta), np.sin(theta)
  h, w = image.shape[:2]
  # tfa.image.rotate: the centre ((w-1)/2, (h-1)/2) maps onto itself.
  tx = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
  ty = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
  return _affine(image, ((cos, -sin), (sin, cos)), (tx, ty), fill)


def shear_x(image: np.ndarray, level: float, fill: int = FILL) -> np.ndarray:
  """Output (x, y) reads input (x + level * y, y)."""
  return _affine(image, ((1.0, level), (0.0, 1.0)), (0.0, 0.0), fill)


def shear_y(image: np.ndarray, level: float, fill: int = FILL) -> np.ndarray:
  """Output (x, y) reads input (x, level * x + y)."""
  return _affine(image, ((1.0, 0.0), (level, 1.0)), (0.0, 0.0), fill)


def translate_x(
  image: np.ndarray, pixels: float, fill: int = FILL
) -> np.ndarray:
  """Output (x, y) reads input (x + pixels, y): content moves left."""
  return _affine(image, ((1.0, 0.0), (0.0, 1.0)), (pixels, 0.0), fill)


def translate_y(
  image: np.ndarray, pixels: float, fill: int = FILL
) -> np.ndarray:
  """Output (x, y) reads input (x, y + pixels): content moves up."""
  return _affine(image, ((1.0, 0.0), (0.0, 1.0)), (0.0, pixels), fill)


def cutout(
  image: np.ndarray, pad_size: int, center: Tuple[int, int], fill: int = FILL
) -> np.ndarray:
  """Fills rows [cy - pad, cy + pad) x cols [cx - pad, cx + pad) (clipped to
  the image) with `fill`; center = (cy, cx)."""
  cy, cx = center
  out = image.copy()
  out[
    max(cy - pad_size, 0) : cy + pad_size, max(cx - pad_size, 0) : cx + pad_size
  ] = fill
  return out


def _signed(value: float, rng: np.random.Generator) -> float:
  """`value` or `-value` with probability 1/2 each."""
  return value if rng.random() < 0.5 else -value


def op_args(
  name: str,
  magnitude: float,
  rng: np.random.Generator,
  image_shape: Tuple[int, ...],
  *,
  cutout_const: float = CUTOUT_CONST,
  translate_const: float = TRANSLATE_CONST,
) -> tuple:
  """The released `level_to_arg` maps, at `magnitude` (0..10).

  Rotate +-30 m/10 degrees, shear +-0.3 m/10, translate
  +-translate_const m/10 pixels (signs drawn from `rng`), posterize
  int(4 m/10) bits, solarize threshold int(256 m/10), solarize_add
  int(110 m/10), the four enhancements factor 1.8 m/10 + 0.1, cutout
  half-size int(cutout_const m/10) at a centre drawn uniformly over the
  pixels.

  Returns:
    The positional arguments that follow the image in the op's call.
  """
  level = magnitude / MAX_LEVEL
  if name in ('AutoContrast', 'Equalize', 'Invert'):
    return ()
  if name == 'Rotate':
    return (_signed(level * 30.0, rng),)
  if name == 'Posterize':
    return (int(level * 4),)
  if name == 'Solarize':
    return (int(level * 256),)
  if name == 'SolarizeAdd':
    return (int(level * 110),)
  if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    return (level * 1.8 + 0.1,)
  if name in ('ShearX', 'ShearY'):
    return (_signed(level * 0.3, rng),)
  if name in ('TranslateX', 'TranslateY'):
    return (_signed(level * float(translate_const), rng),)
  if name == 'Cutout':
    center = (
      int(rng.integers(image_shape[0])),
      int(rng.integers(image_shape[1])),
    )
    return (int(level * cutout_const), center)
  raise ValueError(f'name: expected one of {list(OPS)}, got {name!r}.')


_FUNCS: Dict[str, Callable[..., np.ndarray]] = {
  'AutoContrast': autocontrast,
  'Equalize': equalize,
  'Invert': invert,
  'Rotate': rotate,
  'Posterize': posterize,
  'Solarize': solarize,
  'Color': color,
  'Contrast': contrast,
  'Brightness': brightness,
  'Sharpness': sharpness,
  'ShearX': shear_x,
  'ShearY': shear_y,
  'TranslateX': translate_x,
  'TranslateY': translate_y,
  'Cutout': cutout,
  'SolarizeAdd': solarize_add,
}
_FILLED = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout')


def apply_op(
  name: str,
  image: np.ndarray,
  magnitude: float,
  rng: np.random.Generator,
  *,
  cutout_const: float = CUTOUT_CONST,
  translate_const: float = TRANSLATE_CONST,
  fill: int = FILL,
) -> np.ndarray:
  """Applies operation `name` at `magnitude` to uint8 [H, W, 3]."""
  args = op_args(
    name,
    magnitude,
    rng,
    image.shape,
    cutout_const=cutout_const,
    translate_const=translate_const,
  )
  if name in _FILLED:
    args = args + (fill,)
  return _FUNCS[name](image, *args)


def randaugment(
  record: Dict[str, np.ndarray],
  rng: np.random.Generator,
  *,
  num_layers: int,
  magnitude: float,
  cutout_const: float = CUTOUT_CONST,
  translate_const: float = TRANSLATE_CONST,
  fill: int = FILL,
) -> Dict[str, np.ndarray]:
  """Record op: `num_layers` operations, each chosen uniformly from `OPS`.

  Args:
    record: with 'image' uint8 [H, W, 3]; other entries pass through.
    rng: the record's generator (op choice, signs, cutout centre).
    num_layers: operations applied in sequence (4 in the paper's recipe).
    magnitude: 0..10 (5 in the paper's recipe).
    cutout_const, translate_const: pixel sizes at magnitude 10 (40 and 100
      as released, for crops that are then resized to 224).
    fill: the grey level of pixels uncovered by geometric ops and cutout.

  Returns:
    The record with the augmented uint8 [H, W, 3] 'image'.

  Raises:
    ValueError: the image is not uint8 [H, W, 3].
  """
  image = record['image']
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
      f"record['image']: expected uint8 [H, W, 3], got {image.dtype} "
      f'{list(image.shape)}.'
    )
  for _ in range(num_layers):
    name = OPS[rng.integers(len(OPS))]
    image = apply_op(
      name,
      image,
      magnitude,
      rng,
      cutout_const=cutout_const,
      translate_const=translate_const,
      fill=fill,
    )
  return dict(record, image=image)
