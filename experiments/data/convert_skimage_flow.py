"""Rebuilds the vendored optical-flow files from scikit-image's bundled data.

  python -m experiments.data.convert_skimage_flow

writes, beside this file (see SOURCE.md for sources and licences):

* `flow_textures.npz`: photographs for the procedural AutoFlow-style pairs
  (`experiments/data/autoflow.py`), one uint8 [h, w, 3] array per name
  (grey photographs repeated over the 3 channels), each the image's
  `TEXTURES[name]` x `TEXTURES[name]` block mean, cropped to the window of
  at most 192 x 192 (on a 16-pixel grid) with the most pixels of gradient
  (`_most_textured`): matching needs texture, and the photographs' skies
  and backgrounds have none.
* `motorcycle_half.npz`: the Middlebury 2014 'motorcycle' stereo pair at
  half of scikit-image's size: `left`, `right` uint8 [250, 370, 3] (2 x 2
  block means) and `disparity` float32 [250, 370] in pixels of the halved
  image (the 2 x 2 mean of scikit-image's disparities, halved because
  disparity scales with the width), inf where any of the four is unknown or
  where they spread over more than 1 original pixel (a depth edge, whose
  mean would be a disparity of neither surface).

Needs scikit-image 0.26 (its wheel bundles these files).
"""

import os

import numpy as np
from scipy import ndimage
import skimage.data
from skimage.transform import downscale_local_mean

HERE = os.path.dirname(os.path.abspath(__file__))
# name -> block size of the downscale.
TEXTURES = {
  'astronaut': 2,
  'coffee': 2,
  'chelsea': 2,
  'rocket': 2,
  'hubble_deep_field': 4,
  'immunohistochemistry': 2,
  'camera': 2,
  'coins': 1,
  'brick': 2,
  'grass': 2,
  'gravel': 2,
}
TEXTURE_SIZE = 192
WINDOW_STEP = 16
# A pixel has gradient when its Sobel magnitude (grey levels per pixel)
# reaches this.
GRADIENT = 2.0
DEPTH_EDGE_PX = 1.0


def _block_mean(image: np.ndarray, block: int) -> np.ndarray:
  """Mean over block x block tiles; trailing rows/columns that do not fill a
  tile are dropped."""
  h = image.shape[0] // block * block
  w = image.shape[1] // block * block
  factors = (block, block) + (1,) * (image.ndim - 2)
  return downscale_local_mean(image[:h, :w].astype(np.float64), factors)


def has_gradient(image: np.ndarray) -> np.ndarray:
  """bool [h, w]: the grey image's Sobel gradient magnitude, in grey levels
  per pixel, reaches `GRADIENT`."""
  grey = np.asarray(image, np.float64)
  grey = grey.mean(-1) if grey.ndim == 3 else grey
  magnitude = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1)) / 8
  return magnitude >= GRADIENT


def _most_textured(image: np.ndarray, size: int) -> np.ndarray:
  """The size x size window (top-left on a `WINDOW_STEP` grid; the whole
  extent where the image is smaller) with the most pixels of gradient; the
  first such window in raster order on ties."""
  h, w = image.shape[:2]
  rows, cols = min(size, h), min(size, w)
  counts = np.cumsum(np.cumsum(has_gradient(image), 0), 1)
  counts = np.pad(counts, ((1, 0), (1, 0)))
  best, where = -1, (0, 0)
  for top in range(0, h - rows + 1, WINDOW_STEP):
    for left in range(0, w - cols + 1, WINDOW_STEP):
      n = (
        counts[top + rows, left + cols]
        - counts[top, left + cols]
        - counts[top + rows, left]
        + counts[top, left]
      )
      if n > best:
        best, where = n, (top, left)
  top, left = where
  return image[top : top + rows, left : left + cols]


def textures() -> dict:
  out = {}
  for name, block in TEXTURES.items():
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, -1)
    small = np.rint(_block_mean(image[..., :3], block)).astype(np.uint8)
    out[name] = _most_textured(small, TEXTURE_SIZE)
  return out


def motorcycle_half() -> dict:
  left, right, disparity = skimage.data.stereo_motorcycle()
  blocks = disparity[
    : disparity.shape[0] // 2 * 2, : disparity.shape[1] // 2 * 2
  ]
  h, w = blocks.shape
  quads = blocks.reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3)
  quads = quads.reshape(h // 2, w // 2, 4).astype(np.float64)
  known = np.isfinite(quads).all(-1)
  spread = np.where(known, np.ptp(np.where(known[..., None], quads, 0), -1), 0)
  half = np.where(known & (spread <= DEPTH_EDGE_PX), quads.mean(-1) / 2, np.inf)
  return {
    'left': np.rint(_block_mean(left, 2)).astype(np.uint8),
    'right': np.rint(_block_mean(right, 2)).astype(np.uint8),
    'disparity': half.astype(np.float32),
  }


def main():
  np.savez_compressed(os.path.join(HERE, 'flow_textures.npz'), **textures())
  np.savez_compressed(
    os.path.join(HERE, 'motorcycle_half.npz'), **motorcycle_half()
  )


if __name__ == '__main__':
  main()
