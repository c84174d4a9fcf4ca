"""Fashion-MNIST (Xiao et al. 2017): 70,000 28x28 greyscale clothing photos.

The four original IDX files are vendored xz-compressed in
`experiments/data/fashion-mnist/` (26.4 MB; see SOURCE.md), so nothing is
fetched at run time; `load_fashion_mnist(split, directory)` reads them, or
the same files as distributed (`*-ubyte.gz`, plain or `.xz`) from a
directory a user gives. `FashionMnistSource` serves one split as a grain
random-access source of ImageNet-style records, the grey level repeated over
three channels, so the ImageNet ops and models take it unchanged.

Splits: 'train' (60,000 images, 6,000 per class) and 'test' (10,000, 1,000
per class). Classes (label order): T-shirt/top, Trouser, Pullover, Dress,
Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.

Shapes: N examples; images are 28 x 28 pixels, 0 = background (black).
"""

import functools
import hashlib
import os
from typing import Dict, Tuple

import numpy as np

from experiments.data import DataError
from experiments.data import idx

VENDORED_DIR = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'fashion-mnist'
)
FILES = {
  'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
  'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
SIZES = {'train': 60_000, 'test': 10_000}
NUM_CLASSES = 10
CLASS_NAMES = (
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
)
# Pixel statistics of the 60,000 training images (of 0..255 values).
MEAN, STD = 72.94, 90.02
# sha256 of the vendored files; rebuild with convert_fashion_mnist.py.
SHA256 = {
  'train-images-idx3-ubyte': (
    'fa573e1bd2da2e8b9754eda018b3d9662a98b99ae084adfc28a4aeb51cf413db'
  ),
  'train-labels-idx1-ubyte': (
    '899cfccfc14b42421490dd916e473f9c15a44220b6bfe8a9487e72ae975f21e1'
  ),
  't10k-images-idx3-ubyte': (
    'dc9254d8b9d646e31d4011433945c82f0924763fc16e88307b15403cb2fc7770'
  ),
  't10k-labels-idx1-ubyte': (
    '021b917698d98519478373f5e750f488b1c3f9d7704f711479bdd670a04bee18'
  ),
}


def _vendored_path(name: str) -> str:
  path = os.path.join(VENDORED_DIR, name + '.xz')
  if not os.path.isfile(path):
    raise DataError(
      f'Fashion-MNIST file not found: {path!r}. It is committed in the '
      'repository; restore it with `git checkout -- experiments/data/'
      'fashion-mnist`.'
    )
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  if digest != SHA256[name]:
    raise DataError(
      f'Fashion-MNIST file {path!r} is damaged (e.g. a Git LFS pointer or a '
      f'truncated copy): sha256 {digest}, expected {SHA256[name]}.'
    )
  return path


def _user_path(directory: str, name: str, field: str) -> str:
  for suffix in ('.gz', '', '.xz'):
    path = os.path.join(directory, name + suffix)
    if os.path.isfile(path):
      return path
  raise ValueError(
    f'{field}: expected the Fashion-MNIST file {name}[.gz|.xz] in '
    f'{directory!r}, found none.'
  )


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(
  split: str, directory: str = '', *, field: str = 'data.dir'
) -> Tuple[np.ndarray, np.ndarray]:
  """One split of Fashion-MNIST (cached; the arrays are read-only).

  Args:
    split: 'train' or 'test'.
    directory: '' for the vendored copy (sha256-checked), else a directory
      holding the IDX files as distributed.
    field: the config field that gave `directory`, named in errors.

  Returns:
    images: uint8 [N, 28, 28]; labels: int32 [N] in 0..9.

  Raises:
    ValueError: unknown split, missing directory or file, or arrays of the
      wrong shape, dtype or label range.
    DataError: a vendored file is missing or damaged.
  """
  if split not in FILES:
    raise ValueError(f'split: expected one of {list(FILES)}, got {split!r}.')
  if directory and not os.path.isdir(directory):
    raise ValueError(
      f'{field}: expected an existing directory, got {directory!r}.'
    )
  paths = [
    _user_path(directory, name, field) if directory else _vendored_path(name)
    for name in FILES[split]
  ]
  images, labels = (idx.read_idx(p) for p in paths)
  n = SIZES[split]
  if images.dtype != np.uint8 or images.shape != (n, 28, 28):
    raise ValueError(
      f'{paths[0]}: expected uint8 [{n}, 28, 28], got {images.dtype} '
      f'{list(images.shape)}.'
    )
  if (
    labels.dtype != np.uint8
    or labels.shape != (n,)
    or labels.max() >= NUM_CLASSES
  ):
    raise ValueError(
      f'{paths[1]}: expected uint8 [{n}] labels in 0..{NUM_CLASSES - 1}, '
      f'got {labels.dtype} {list(labels.shape)} up to {labels.max()}.'
    )
  labels = labels.astype(np.int32)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


class FashionMnistSource:
  """One Fashion-MNIST split as a grain random-access data source.

  Records are {'image': uint8 [28, 28, 3], 'label': int32 []}. Pickling
  keeps only the split, directory and length; a worker process reloads the
  (cached) arrays on first use.
  """

  def __init__(
    self,
    split: str,
    directory: str = '',
    *,
    limit: int = 0,
    field: str = 'data.dir',
  ):
    """Loads the split now, so that a bad path fails before training.

    Args:
      split: 'train' or 'test'.
      directory: see `load_fashion_mnist`.
      limit: if positive, serve only the first `limit` examples.
      field: the config field that gave `directory`, named in errors.

    Raises:
      ValueError: as `load_fashion_mnist`, or `limit` beyond the split.
    """
    images, _ = load_fashion_mnist(split, directory, field=field)
    if limit < 0 or limit > len(images):
      raise ValueError(
        f'limit: expected 0 (all) to {len(images)}, got {limit}.'
      )
    self.split, self.directory, self.field = split, directory, field
    self._len = limit or len(images)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    """Record `index`: {'image': uint8 [28, 28, 3], 'label': int32 []}."""
    if not 0 <= index < self._len:
      raise IndexError(f'index: expected [0, {self._len}), got {index}.')
    images, labels = load_fashion_mnist(
      self.split, self.directory, field=self.field
    )
    return {
      'image': np.repeat(images[index][..., None], 3, axis=-1),
      'label': labels[index],
    }

  def __repr__(self) -> str:
    return f'FashionMnistSource({self.split!r}, {self._len} images)'
