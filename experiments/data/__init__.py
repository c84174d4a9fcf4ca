"""Vendored data sets small enough to ship with the repository.

`load_mnist_10k()` returns 10,000 real MNIST digits (see SOURCE.md beside this
file). They are stored shuffled with a fixed seed, so a prefix/suffix split,
e.g. `images[:8000]` / `images[8000:]`, is a fair train/test split.

Shapes: N examples, H = W = 28 pixels.
"""

import hashlib
import os
import zipfile
from typing import Optional, Tuple

import numpy as np

MNIST_10K_PATH = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'mnist_10k.npz'
)
# sha256 of the committed mnist_10k.npz; update it if the file is rebuilt.
MNIST_10K_SHA256 = (
  'f1a23f2fb1a1c97bb00a811807ddd50a888dbcdcdead94147993273c22ee3f37'
)
MNIST_10K_SIZE = 10_000
NUM_CLASSES = 10


class DataError(RuntimeError):
  """The vendored data file is missing or damaged."""


def load_mnist_10k(path: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Loads the vendored MNIST digits.

  Args:
    path: the .npz file; defaults to the committed `mnist_10k.npz`, whose
      sha256 is then checked too.

  Returns:
    images: uint8 [N, 28, 28], 0 = background, 255 = ink.
    labels: int32 [N], digit classes 0..9.

  Raises:
    DataError: the file is missing, not a readable .npz (e.g. a Git LFS
      pointer or a truncated copy), fails its checksum, or holds arrays of
      the wrong shape, dtype or label range.
  """
  check_sha = path is None
  path = MNIST_10K_PATH if path is None else path
  if not os.path.isfile(path):
    raise DataError(
      f'MNIST file not found: {path!r}. It is committed in the '
      'repository at experiments/data/mnist_10k.npz; restore '
      'it with `git checkout -- experiments/data/mnist_10k.npz`.'
    )
  if check_sha:
    with open(path, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    if digest != MNIST_10K_SHA256:
      raise DataError(
        f'MNIST file {path!r} is damaged: sha256 {digest}, '
        f'expected {MNIST_10K_SHA256}.'
      )
  try:
    with np.load(path, allow_pickle=False) as npz:
      images = npz['images']
      labels = npz['labels']
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(
      f'MNIST file {path!r} is damaged or not an .npz holding '
      f'`images` and `labels`: {e}'
    ) from e

  if (
    images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28)
  ):
    raise DataError(
      f'MNIST images in {path!r}: expected uint8 [N, 28, 28], '
      f'got {images.dtype} {list(images.shape)}.'
    )
  if labels.shape != images.shape[:1]:
    raise DataError(
      f'MNIST labels in {path!r}: expected shape '
      f'[{images.shape[0]}], got {list(labels.shape)}.'
    )
  if not np.issubdtype(labels.dtype, np.integer) or (
    labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES)
  ):
    raise DataError(
      f'MNIST labels in {path!r}: expected integers in '
      f'[0, {NUM_CLASSES}), got {labels.dtype}.'
    )
  return images, labels.astype(np.int32)
