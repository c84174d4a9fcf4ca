"""Image data readers: ImageNet folders, TFDS ArrayRecord, IDX, Fashion-MNIST.

Every reader is checked on files the test writes itself in the published
format: JPEG trees in the ILSVRC layout, IDX files from their header spec,
and tf.train.Example records encoded byte by byte from the protobuf wire
format (not with the reader's own message class).
"""

import gzip
import io
import lzma
import os
import pickle
import struct

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from experiments.data import fashion_mnist
from experiments.data import idx
from experiments.data import images
from experiments.data import tfds

# Labels of three wnids in the released 1,000-class order (ILSVRC 2012
# sorted wnids: tench is class 0, goldfish 1, toilet tissue 999).
TENCH, GOLDFISH, TISSUE = 'n01440764', 'n01443537', 'n15075141'
WNID_LABELS = {TENCH: 0, GOLDFISH: 1, TISSUE: 999}


def _jpeg_bytes(color, size=(12, 9), mode='RGB') -> bytes:
  buf = io.BytesIO()
  Image.new(mode, size, color).save(buf, 'JPEG', quality=100)
  return buf.getvalue()


def _write_tree(root, split, spec):
  """spec: {wnid: [(file name, colour), ...]}."""
  for wnid, files in spec.items():
    folder = os.path.join(root, split, wnid)
    os.makedirs(folder, exist_ok=True)
    for name, color in files:
      with open(os.path.join(folder, name), 'wb') as f:
        f.write(_jpeg_bytes(color))


# ---------------------------------------------------------------------------
# ImageFolderSource
# ---------------------------------------------------------------------------


def test_image_folder_labels_order_and_pixels(tmp_path):
  root = str(tmp_path)
  _write_tree(
    root,
    'train',
    {
      TISSUE: [('b.JPEG', (0, 0, 255)), ('a.JPEG', (0, 255, 0))],
      TENCH: [('x.jpg', (255, 0, 0))],
    },
  )
  os.makedirs(os.path.join(root, 'train', GOLDFISH))  # empty class: no images
  with open(os.path.join(root, 'train', TENCH, 'notes.txt'), 'w') as f:
    f.write('not an image')
  source = images.ImageFolderSource(root, 'train')
  assert len(source) == 3
  # Classes in label order, files sorted by name within a class.
  expected = [(0, (255, 0, 0)), (999, (0, 255, 0)), (999, (0, 0, 255))]
  for i, (label, color) in enumerate(expected):
    record = source[i]
    assert record['label'] == label and record['label'].dtype == np.int32
    assert record['image'].dtype == np.uint8
    assert record['image'].shape == (9, 12, 3)
    np.testing.assert_allclose(
      record['image'].reshape(-1, 3).mean(0), color, atol=3
    )
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[2]['image'], source[2]['image'])


@pytest.mark.parametrize('mode,color', [('L', 128), ('CMYK', (0, 0, 0, 0))])
def test_image_folder_converts_to_rgb(tmp_path, mode, color):
  folder = tmp_path / 'val' / GOLDFISH
  folder.mkdir(parents=True)
  (folder / 'g.JPEG').write_bytes(_jpeg_bytes(color, mode=mode))
  record = images.ImageFolderSource(str(tmp_path), 'val')[0]
  assert record['image'].shape == (9, 12, 3) and record['label'] == 1


def test_image_folder_errors(tmp_path):
  root = str(tmp_path)
  with pytest.raises(
    ValueError, match=r'data.dir: expected an existing dir.*nope'
  ):
    images.ImageFolderSource(os.path.join(root, 'nope'), 'train')
  with pytest.raises(ValueError, match=r"data.dir: expected a 'val' directory"):
    images.ImageFolderSource(root, 'val')
  os.makedirs(os.path.join(root, 'train', TENCH))
  with pytest.raises(ValueError, match=r'expected images \(.jpeg.*found none'):
    images.ImageFolderSource(root, 'train')


def test_image_folder_any_class_names_take_sorted_labels(tmp_path):
  root = str(tmp_path)
  # Made-up names, written out of order; PNG and JPEG files.
  _write_tree(root, 'train', {'zebra': [('z.JPEG', (0, 0, 255))]})
  _write_tree(root, 'train', {'cat': [('b.jpg', (255, 0, 0))]})
  dog = tmp_path / 'train' / 'dog'
  dog.mkdir()
  Image.new('RGB', (12, 9), (0, 255, 0)).save(dog / 'a.png')
  train = images.ImageFolderSource(root, 'train')
  assert train.classes == ('cat', 'dog', 'zebra')  # K = 3
  # cat 0, dog 1, zebra 2 (by hand: the names in sorted order).
  assert train.labels.tolist() == [0, 1, 2]
  np.testing.assert_allclose(
    train[1]['image'].reshape(-1, 3).mean(0), (0, 255, 0), atol=1
  )
  _write_tree(root, 'val', {'zebra': [('v.JPEG', (0, 0, 255))]})
  val = images.ImageFolderSource(root, 'val', classes=train.classes)
  assert val.labels.tolist() == [2]  # the training split's labels
  # A validation class the training split lacks names both.
  _write_tree(root, 'val', {'emu': [('e.JPEG', (9, 9, 9))]})
  with pytest.raises(
    ValueError, match=r"^data.dir: expected the class folders .*val.*\['emu'\]"
  ):
    images.ImageFolderSource(root, 'val', classes=train.classes)


def test_class_order_released_for_wnids_sorted_otherwise():
  wnids = images.imagenet_wnids()
  # Every folder a wnid (here a subset): the released 1,000-class order.
  assert images.class_order([TISSUE, TENCH]) == wnids
  # One other name: the sorted folder names, K = 3.
  assert images.class_order([TISSUE, 'cats', TENCH]) == ('cats', TENCH, TISSUE)


def test_image_folder_corrupt_file_names_file_and_index(tmp_path):
  _write_tree(str(tmp_path), 'train', {TENCH: [('a.JPEG', (1, 2, 3))]})
  bad = tmp_path / 'train' / TENCH / 'b.JPEG'
  bad.write_bytes(b'\xff\xd8 truncated')
  source = images.ImageFolderSource(str(tmp_path), 'train')
  source[0]
  with pytest.raises(images.CorruptRecordError, match=r'b\.JPEG \(record 1\)'):
    source[1]


def test_imagenet_wnids_order():
  wnids = images.imagenet_wnids()
  assert len(wnids) == 1000
  for wnid, label in WNID_LABELS.items():
    assert wnids[label] == wnid


# ---------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
  header = bytes([0, 0, code, array.ndim]) + b''.join(
    struct.pack('>I', n) for n in array.shape
  )
  return header + array.astype(array.dtype.newbyteorder('>')).tobytes()


@pytest.mark.parametrize(
  'dtype,code',
  [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C)]
  + [(np.float32, 0x0D), (np.float64, 0x0E)],
)
@pytest.mark.parametrize('suffix', ['', '.gz', '.xz'])
def test_read_idx(tmp_path, dtype, code, suffix):
  array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
  if dtype == np.uint8:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
  data = _idx_bytes(array, code)
  compress = {'': lambda b: b, '.gz': gzip.compress, '.xz': lzma.compress}
  path = tmp_path / f'a-idx3-ubyte{suffix}'
  path.write_bytes(compress[suffix](data))
  out = idx.read_idx(str(path))
  assert out.dtype == np.dtype(dtype) and out.dtype.isnative
  np.testing.assert_array_equal(out, array)


def test_read_idx_errors(tmp_path):
  with pytest.raises(ValueError, match='path: expected an IDX file'):
    idx.read_idx(str(tmp_path / 'missing'))
  bad = tmp_path / 'bad'
  bad.write_bytes(b'\x00\x01\x08\x01' + struct.pack('>I', 1) + b'\x00')
  with pytest.raises(ValueError, match='magic number'):
    idx.read_idx(str(bad))
  short = tmp_path / 'short'
  short.write_bytes(_idx_bytes(np.zeros((2, 3), np.uint8), 0x08)[:-1])
  with pytest.raises(ValueError, match=r'shape \(2, 3\).*holds 5 bytes'):
    idx.read_idx(str(short))
  not_gz = tmp_path / 'x.gz'
  not_gz.write_bytes(b'plain')
  with pytest.raises(ValueError, match='not a readable IDX file'):
    idx.read_idx(str(not_gz))


# ---------------------------------------------------------------------------
# TFDS imagenet2012 in ArrayRecord format
# ---------------------------------------------------------------------------


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(image: bytes, label: int, packed: bool = True) -> bytes:
  """tf.train.Example wire bytes: Example.features(1) -> Features.feature(1)
  map entries {key(1), value(2) Feature}; Feature.bytes_list(1) /
  int64_list(3); *List.value(1)."""
  if packed:
    int64_list = _len_field(1, _varint(label))
  else:
    int64_list = _varint(1 << 3 | 0) + _varint(label)
  features = {
    b'image': _len_field(1, _len_field(1, image)),
    b'label': _len_field(3, int64_list),
    b'file_name': _len_field(1, _len_field(1, b'n0_1.JPEG')),
  }
  entries = b''.join(
    _len_field(1, _len_field(1, key) + _len_field(2, value))
    for key, value in features.items()
  )
  return _len_field(1, entries)


def _write_shards(directory, split, shards):
  os.makedirs(directory, exist_ok=True)
  for i, records in enumerate(shards):
    name = f'imagenet2012-{split}.array_record-{i:05d}-of-{len(shards):05d}'
    writer = ArrayRecordWriter(os.path.join(directory, name), 'group_size:1')
    for record in records:
      writer.write(record)
    writer.close()


def test_tfds_source_reads_examples_across_shards(tmp_path):
  version = tmp_path / 'imagenet2012' / '5.1.0'
  colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
  shards = [
    [_example(_jpeg_bytes(colors[0]), 7)],
    [
      _example(_jpeg_bytes(colors[1]), 0, packed=False),
      _example(_jpeg_bytes(colors[2]), 999),
    ],
  ]
  _write_shards(str(version), 'validation', shards)
  # An older version and another split must not be picked up.
  _write_shards(str(tmp_path / 'imagenet2012' / '5.0.0'), 'validation', [[]])
  _write_shards(str(version), 'train', [[_example(_jpeg_bytes(colors[0]), 3)]])
  for root in (tmp_path, tmp_path / 'imagenet2012', version):
    source = tfds.TfdsImageNetSource(str(root), 'validation')
    assert len(source) == 3
    for i, (label, color) in enumerate(zip([7, 0, 999], colors)):
      record = source[i]
      assert record['label'] == label and record['label'].dtype == np.int32
      np.testing.assert_allclose(
        record['image'].reshape(-1, 3).mean(0), color, atol=3
      )
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[1]['image'], source[1]['image'])
  with pytest.raises(IndexError):
    source[3]


def test_tfds_example_class_matches_wire_format():
  example = tfds.example_class().FromString(_example(b'jpeg', 5))
  feature = example.features.feature
  assert list(feature['image'].bytes_list.value) == [b'jpeg']
  assert list(feature['label'].int64_list.value) == [5]
  assert set(feature) == {'image', 'label', 'file_name'}


def test_tfds_errors(tmp_path):
  with pytest.raises(ValueError, match='data.dir: expected an existing'):
    tfds.TfdsImageNetSource(str(tmp_path / 'nope'), 'train')
  with pytest.raises(ValueError, match='found none'):
    tfds.TfdsImageNetSource(str(tmp_path), 'train')
  _write_shards(str(tmp_path), 'train', [[b'x'], [b'y'], [b'z']])
  os.remove(tmp_path / 'imagenet2012-train.array_record-00001-of-00003')
  with pytest.raises(ValueError, match='complete shard set'):
    tfds.TfdsImageNetSource(str(tmp_path), 'train')
  empty = tmp_path / 'empty'
  _write_shards(str(empty), 'train', [[]])
  with pytest.raises(ValueError, match='hold no records'):
    tfds.TfdsImageNetSource(str(empty), 'train')


@pytest.mark.parametrize(
  'record,match',
  [
    (b'\x0a\x05abc', 'not a tf.train.Example'),
    (_example(_jpeg_bytes((0, 0, 0)), 1000), r'label.*\[1000\]'),
    (_example(b'not a jpeg', 1), 'not a decodable image'),
  ],
)
def test_tfds_corrupt_record_names_shard_and_index(tmp_path, record, match):
  _write_shards(str(tmp_path), 'train', [[_example(_jpeg_bytes(0), 1), record]])
  source = tfds.TfdsImageNetSource(str(tmp_path), 'train')
  source[0]
  with pytest.raises(
    images.CorruptRecordError,
    match=rf'00000-of-00001 \(record 1; index 1\).*{match}',
  ):
    source[1]


# ---------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------


def test_vendored_fashion_mnist():
  for split, n in (('train', 60_000), ('test', 10_000)):
    x, y = fashion_mnist.load_fashion_mnist(split)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8
    # Balanced classes, as published: 6,000 / 1,000 per class.
    np.testing.assert_array_equal(np.bincount(y), [n // 10] * 10)
    assert not x.flags.writeable
  x, _ = fashion_mnist.load_fashion_mnist('train')
  assert abs(x.mean() - fashion_mnist.MEAN) < 0.01
  assert abs(x.std() - fashion_mnist.STD) < 0.01


def test_fashion_mnist_from_user_directory_and_source(tmp_path):
  rng = np.random.default_rng(0)
  n = fashion_mnist.SIZES['test']
  test_x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  test_y = (np.arange(n) % 10).astype(np.uint8)
  for name, array in zip(fashion_mnist.FILES['test'], (test_x, test_y)):
    data = gzip.compress(_idx_bytes(array, 0x08), compresslevel=1)
    (tmp_path / f'{name}.gz').write_bytes(data)
  source = fashion_mnist.FashionMnistSource('test', str(tmp_path), limit=5)
  assert len(source) == 5
  record = source[3]
  assert record['image'].shape == (28, 28, 3) and record['label'] == 3
  for c in range(3):
    np.testing.assert_array_equal(record['image'][..., c], test_x[3])
  assert record['label'] == test_y[3]
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[4]['image'], source[4]['image'])
  with pytest.raises(IndexError):
    source[5]


def test_fashion_mnist_errors(tmp_path):
  with pytest.raises(ValueError, match='data.dir: expected an existing dir'):
    fashion_mnist.load_fashion_mnist('train', str(tmp_path / 'nope'))
  with pytest.raises(ValueError, match='train-images-idx3-ubyte'):
    fashion_mnist.load_fashion_mnist('train', str(tmp_path))
  with pytest.raises(ValueError, match='split: expected one of'):
    fashion_mnist.load_fashion_mnist('validation')
  with pytest.raises(ValueError, match='limit: expected 0'):
    fashion_mnist.FashionMnistSource('test', limit=10_001)
