"""Optical flow between two frames of any size, saved as a colour-wheel PNG.

  python examples/optical_flow.py --checkpoint optical_flow_checkpoint.pystate \
      --image1 frame_0016.png --image2 frame_0017.png --out flow.png

As the colab (optical_flow.ipynb): frames scaled to [-1, 1], tiled into
368 x 496 windows overlapping by at least 20 pixels, flows stitched with
pyramid weights. Without --image1/--image2 the second frame is the first
shifted by --shift DX DY pixels, so a released model should report about
that flow.
"""

import numpy as np

from perceiver import tasks

import _common


def synthetic_pair(height, width, dx, dy, seed=0):
  """A smooth random texture and the same texture moved by (dx, dy)."""
  rng = np.random.default_rng(seed)
  pad = max(abs(dx), abs(dy)) + 1
  coarse = rng.uniform(
    0, 255, ((height + 2 * pad) // 8 + 2, (width + 2 * pad) // 8 + 2, 3)
  )
  texture = np.kron(coarse, np.ones((8, 8, 1)))  # blocky but textured
  texture = texture[: height + 2 * pad, : width + 2 * pad]
  frame1 = texture[pad : pad + height, pad : pad + width]
  # Content at (y, x) in frame 1 is at (y + dy, x + dx) in frame 2.
  frame2 = texture[pad - dy : pad - dy + height, pad - dx : pad - dx + width]
  return frame1.astype(np.uint8), frame2.astype(np.uint8)


def main():
  p = _common.parser(__doc__.splitlines()[0])
  p.add_argument('--image1', default=None, metavar='PATH')
  p.add_argument('--image2', default=None, metavar='PATH')
  p.add_argument(
    '--shift', nargs=2, type=int, default=(3, 2), metavar=('DX', 'DY')
  )
  p.add_argument('--out', default='flow.png', help='PNG to write')
  p.add_argument(
    '--batch_size', type=int, default=1, help='tiles per model call'
  )
  args = p.parse_args()
  params, state, overrides = _common.load('optical_flow', args.checkpoint)
  if args.image1 and args.image2:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    frame1 = np.asarray(Image.open(args.image1).convert('RGB'))
    frame2 = np.asarray(Image.open(args.image2).convert('RGB'))
  else:
    size = (436, 1024) if args.checkpoint else (40, 70)  # Sintel-sized
    frame1, frame2 = synthetic_pair(*size, *args.shift)
    print(
      f'Synthetic {size[0]}x{size[1]} pair, frame 2 = frame 1 moved by '
      f'dx={args.shift[0]}, dy={args.shift[1]}.'
    )
  tile = overrides.get('image_size', (368, 496))
  min_overlap = tasks.FLOW_MIN_OVERLAP if args.checkpoint else 4
  print(
    f'{len(tasks.grid_indices(frame1.shape[:2], tile, min_overlap))} '
    f'tiles of {tile[0]}x{tile[1]}'
    if min(frame1.shape[:2]) >= min(tile)
    else 'frames smaller than a tile: padded'
  )
  flow = tasks.optical_flow(
    'optical_flow',
    params,
    state,
    frame1,
    frame2,
    min_overlap=min_overlap,
    batch_size=args.batch_size,
    overrides=overrides,
  )
  print(
    f'Flow {flow.shape}: mean dx={flow[..., 0].mean():.2f}, '
    f'mean dy={flow[..., 1].mean():.2f}, max |flow|='
    f'{np.linalg.norm(flow, axis=-1).max():.2f} px'
  )
  print('Wrote', tasks.save_flow_png(flow, args.out))


if __name__ == '__main__':
  main()
