"""An image folder (ImageNet's or any other), read as a random-access source.

The layout is the one users get from the ILSVRC 2012 archives (the training
tarball unpacked per class, the validation images re-sorted into class
folders by the usual script), or any tree of the same shape:

  DIR/train/<class>/*.JPEG (or .jpg, .png)
  DIR/val/<class>/*.JPEG

Labels (`class_order`): when every class folder is an ILSVRC 2012 WordNet id
such as `n01440764`, the released models' 1,000-class order (the sorted
wnids of `perceiver/imagenet_labels.txt`, as in TFDS `imagenet2012`), so a
released checkpoint's logit k is the class with label k; a tree with fewer
of those classes (a subset) keeps the same labels, a subset of 0..999.
Otherwise (e.g. `cat/`, `dog/`) label k is the k-th class folder name in
sorted order, K = the number of class folders. The validation split takes
the training split's labels (`classes=`).

A record is `{'image': uint8 [H, W, 3], 'label': int32 []}` with the image
decoded by Pillow and converted to RGB (ILSVRC holds a few greyscale and CMYK
JPEGs); H and W vary per image until the crop ops fix them.

Shapes: H, W image height and width in pixels.
"""

import functools
import io
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

import perceiver

IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png')  # compared lower-case
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


def class_order(folders: Sequence[str]) -> Tuple[str, ...]:
  """The label order of a split whose class folders are `folders`.

  Returns:
    The 1,000 ILSVRC 2012 wnids (`imagenet_wnids`, the released order) when
    every folder is one of them, else the sorted folder names.
  """
  wnids = imagenet_wnids()
  if folders and set(folders) <= set(wnids):
    return wnids
  return tuple(sorted(folders))


class ImageFolderSource:
  """`DIR/<split>/<class>/*.JPEG` as a grain random-access data source.

  The file list is built once (classes in label order, files sorted by name
  within a class), so index i is the same image on every process and run.
  The source holds only paths and labels: it pickles cheaply to grain
  workers and opens each file when it is read. `classes` is the label
  order (label k is `classes[k]`; K = `len(classes)`).
  """

  def __init__(
    self,
    root: str,
    split: str,
    *,
    classes: Optional[Sequence[str]] = None,
    field: str = 'data.dir',
  ):
    """Lists the images of one split.

    Args:
      root: DIR, the directory holding `train/` and `val/`.
      split: the sub-directory to read, e.g. 'train' or 'val'.
      classes: the label order, e.g. the training split's `classes` for
        'val'; None: `class_order` of this split's class folders.
      field: the config field that gave `root`, named in errors.

    Raises:
      ValueError: `root` or `root/split` is not a directory, a class folder
        is not in `classes`, or the split holds no image.
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
    folders = sorted(
      d
      for d in os.listdir(directory)
      if os.path.isdir(os.path.join(directory, d))
    )
    self.classes = class_order(folders) if classes is None else tuple(classes)
    label_of = {name: k for k, name in enumerate(self.classes)}
    unknown = [name for name in folders if name not in label_of]
    if unknown:
      raise ValueError(
        f'{field}: expected the class folders of {directory!r} to be '
        f'classes of the training split ({len(self.classes)}: '
        f'{list(self.classes[:5])}...), got {len(unknown)} others: '
        f'{unknown[:5]}.'
      )
    paths, labels = [], []
    for name in folders:
      folder = os.path.join(directory, name)
      files = sorted(
        n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)
      )
      paths.extend(os.path.join(folder, n) for n in files)
      labels.extend([label_of[name]] * len(files))
    if not paths:
      raise ValueError(
        f'{field}: expected images ({", ".join(IMAGE_SUFFIXES)}) in '
        f'{directory!r}/<class>/, found none ({len(folders)} class '
        'folders).'
      )
    self.folders = tuple(folders)
    self.paths = tuple(paths)
    self.labels = np.asarray(labels, np.int32)

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
      f'ImageFolderSource({len(self.paths)} images in '
      f'{len(self.folders)} class folders, {len(self.classes)} labels)'
    )
