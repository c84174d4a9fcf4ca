"""Rebuilds the vendored Fashion-MNIST files from Debian's package.

  apt-get update && apt-get download dataset-fashion-mnist
  dpkg -x dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb /tmp/fm
  python experiments/data/convert_fashion_mnist.py \
      /tmp/fm/usr/share/datasets/fashion-mnist experiments/data/fashion-mnist

Each of the four original IDX files (`{train,t10k}-{images-idx3,labels-idx1}
-ubyte.gz`) is decompressed, checked with `experiments.data.idx.read_idx`
(shape and label range), and written unchanged byte for byte, compressed with
xz (LZMA preset 9 extreme): 26.4 MB instead of gzip's 30.9 MB. The script
re-reads each written file, compares it with the original, and prints the
sha256 digests to paste into `experiments/data/fashion_mnist.py` and
SOURCE.md.
"""

import gzip
import hashlib
import lzma
import os
import sys

import numpy as np

from experiments.data import fashion_mnist
from experiments.data import idx


def convert(source_dir: str, target_dir: str) -> None:
  """Writes `<name>.xz` in target_dir for each IDX file of the data set."""
  os.makedirs(target_dir, exist_ok=True)
  for split, (images_name, labels_name) in fashion_mnist.FILES.items():
    count = fashion_mnist.SIZES[split]
    for name, shape in (
      (images_name, (count, 28, 28)),
      (labels_name, (count,)),
    ):
      original = os.path.join(source_dir, name + '.gz')
      array = idx.read_idx(original)
      if array.shape != shape or array.dtype != np.uint8:
        raise ValueError(
          f'{original}: expected uint8 {list(shape)}, got {array.dtype} '
          f'{list(array.shape)}.'
        )
      if name == labels_name and array.max() >= fashion_mnist.NUM_CLASSES:
        raise ValueError(f'{original}: labels beyond 0..9.')
      with gzip.open(original, 'rb') as f:
        raw = f.read()
      target = os.path.join(target_dir, name + '.xz')
      with open(target, 'wb') as f:
        f.write(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
      if not np.array_equal(idx.read_idx(target), array):
        raise RuntimeError(f'{target}: does not read back as {original}.')
      with open(target, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      print(f'{name}.xz  {os.path.getsize(target)} bytes  sha256 {digest}')


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit(f'usage: {sys.argv[0]} SOURCE_DIR TARGET_DIR')
  convert(sys.argv[1], sys.argv[2])
