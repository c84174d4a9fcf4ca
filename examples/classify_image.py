"""Classifies an image with a Perceiver IO ImageNet model: top-5 labels.

  python examples/classify_image.py --preset imagenet_fourier \
      --checkpoint imagenet_fourier_position_encoding.pystate --image dog.jpg

As the colab (imagenet_classification.ipynb): centre crop with padding
224 / (224 + 32), bicubic resize to 224, ImageNet mean/std, softmax, top 5.
Without --image a synthetic picture is used.
"""

import numpy as np

from perceiver import tasks

import _common


def synthetic_image(height=300, width=400):
  """Smooth colour gradients with a bright disc (no data set needed)."""
  y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
  image = np.stack([x, y, 1 - x], axis=-1) * 200
  image[(y - 0.5) ** 2 + (x - 0.5) ** 2 < 0.05] = (250, 220, 40)
  return image.astype(np.uint8)


def main():
  p = _common.parser(__doc__.splitlines()[0])
  p.add_argument(
    '--preset',
    default='imagenet_fourier',
    choices=['imagenet_fourier', 'imagenet_conv', 'imagenet_learned'],
  )
  p.add_argument(
    '--image',
    default=None,
    metavar='PATH',
    help='an image file (any size); default synthetic',
  )
  args = p.parse_args()
  if args.image:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    image = Image.open(args.image).convert('RGB')
  else:
    image = synthetic_image()
  params, state, overrides = _common.load(args.preset, args.checkpoint)
  top = tasks.classify_image(
    args.preset, params, state, image, overrides=overrides
  )
  print('Top-5:')
  for index, prob, label in zip(top.indices, top.probs, top.labels):
    print(f'  {prob:7.2%}  {index:4d}  {label}')


if __name__ == '__main__':
  main()
