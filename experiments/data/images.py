"""ImageNet stored as an image folder, read as a random-access source.

The layout is the one users get from the ILSVRC 2012 archives (the training
tarball unpacked per class, the validation images re-sorted into class
folders by the usual script):

  DIR/train/<wnid>/*.JPEG
  DIR/val/<wnid>/*.JPEG

`<wnid>` is a WordNet id such as `n01440764`. Labels follow the released
models' 1,000-class order (the sorted wnids of `perceiver/imagenet_labels.txt`,
as in TFDS `imagenet2012`), so a released checkpoint's logit k is the class
with label k. A tree with fewer classes (a subset) keeps the same labels: its
labels are a subset of 0..999.

A record is `{'image': uint8 [H, W, 3], 'label': int32 []}` with the image
decoded by Pillow and converted to RGB (ILSVRC holds a few greyscale and CMYK
JPEGs); H and W vary per image until the crop ops fix them.

Shapes: H, W image height and width in pixels.
"""

import functools
import io
import os
from typing import Dict, Tuple

import numpy as np
from PIL import Image

import perceiver

IMAGE_SUFFIXES = ('.jpeg', '.jpg')  # compared lower-case: *.JPEG, *.jpg
_LABELS_PATH = os.path.join(
  os.path.dirname(os.path.abspath(perceiver.__file__)), 'imagenet_labels.txt'
)


class CorruptRecordError(ValueError):
  """A record that cannot be decoded; the message names its file and index."""


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> Tuple[str, ...]:
  """The 1,000 ILSVRC 2012 WordNet ids in label order (label k is entry k).

  Read from the first column of `perceiver/imagenet_labels.txt`, whose
  class names `perceiver.tasks.imagenet_labels()` returns in the same order.
  """
  wnids = []
  with open(_LABELS_PATH, encoding='utf-8') as f:
    for line in f:
      if line.strip() and not line.startswith('#'):
        wnids.append(line.split('\t', 1)[0])
  if len(wnids) != 1000 or sorted(wnids) != wnids:
    raise RuntimeError(
      f'{_LABELS_PATH}: expected 1000 sorted wnids, found {len(wnids)}.'
    )
  return tuple(wnids)


def decode_image(data: bytes, where: str) -> np.ndarray:
  """Decodes encoded image bytes (JPEG, PNG, ...) to uint8 [H, W, 3] RGB.

  Args:
    data: the encoded file contents.
    where: the file and record index, for the error message.

  Returns:
    uint8 [H, W, 3].

  Raises:
    CorruptRecordError: naming `where`, if Pillow cannot decode the bytes.
  """
  try:
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert('RGB'))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise CorruptRecordError(f'{where}: not a decodable image ({e}).') from e


class ImageFolderSource:
  """`DIR/<split>/<wnid>/*.JPEG` as a grain random-access data source.

  The file list is built once (classes in label order, files sorted by name
  within a class), so index i is the same image on every process and run.
  The source holds only paths and labels: it pickles cheaply to grain
  workers and opens each file when it is read.
  """

  def __init__(self, root: str, split: str, *, field: str = 'data.dir'):
    """Lists the images of one split.

    Args:
      root: DIR, the directory holding `train/` and `val/`.
      split: the sub-directory to read, e.g. 'train' or 'val'.
      field: the config field that gave `root`, named in errors.

    Raises:
      ValueError: `root` or `root/split` is not a directory, a class folder
        is not an ILSVRC 2012 wnid, or the split holds no image.
    """
    if not root or not os.path.isdir(root):
      raise ValueError(
        f'{field}: expected an existing directory, got {root!r}.'
      )
    directory = os.path.join(root, split)
    if not os.path.isdir(directory):
      raise ValueError(
        f'{field}: expected a {split!r} directory inside {root!r} (layout '
        f'DIR/{split}/<wnid>/*.JPEG), got none at {directory!r}.'
      )
    label_of = {w: i for i, w in enumerate(imagenet_wnids())}
    classes = sorted(
      d
      for d in os.listdir(directory)
      if os.path.isdir(os.path.join(directory, d))
    )
    unknown = [c for c in classes if c not in label_of]
    if unknown:
      raise ValueError(
        f'{field}: expected class folders named by ILSVRC 2012 wnids (e.g. '
        f'n01440764) in {directory!r}, got {len(unknown)} others: '
        f'{unknown[:5]}.'
      )
    paths, labels = [], []
    for wnid in classes:
      folder = os.path.join(directory, wnid)
      names = sorted(
        n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)
      )
      paths.extend(os.path.join(folder, n) for n in names)
      labels.extend([label_of[wnid]] * len(names))
    if not paths:
      raise ValueError(
        f'{field}: expected *.JPEG images in {directory!r}/<wnid>/, found '
        f'none ({len(classes)} class folders).'
      )
    self.paths = tuple(paths)
    self.labels = np.asarray(labels, np.int32)
    self.classes = tuple(classes)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    """Record `index`: {'image': uint8 [H, W, 3], 'label': int32 []}."""
    path = self.paths[index]
    where = f'{path} (record {index})'
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise CorruptRecordError(f'{where}: unreadable ({e}).') from e
    return {'image': decode_image(data, where), 'label': self.labels[index]}

  def __repr__(self) -> str:
    return (
      f'ImageFolderSource({len(self.paths)} images, {len(self.classes)} '
      'classes)'
    )
