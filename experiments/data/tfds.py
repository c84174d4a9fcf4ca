"""TFDS `imagenet2012` prepared in ArrayRecord format, read without TensorFlow.

TFDS, asked for its ArrayRecord file format (e.g. `tfds build
imagenet2012 --file_format=array_record`) writes each split into
`DATA_DIR/imagenet2012/<version>/` as shards named

  imagenet2012-<split>.array_record-NNNNN-of-MMMMM

each record a serialized `tf.train.Example` with the features
`image` (the encoded JPEG, bytes), `label` (int64, sorted-wnid order, the
released models' order) and `file_name` (bytes). Reading needs neither
TensorFlow nor TFDS: grain's `ArrayRecordDataSource` (the `array_record`
package) gives random access to the serialized records, and the `Example`
message is parsed with the `protobuf` runtime from its public schema
(tensorflow/core/example/{example,feature}.proto, proto3), declared below.
Records written in TFDS's TFRecord format are not supported (TFRecord has no
random access); prepare the data set with `--file_format=array_record`.

A record is `{'image': uint8 [H, W, 3], 'label': int32 []}`, as
`images.ImageFolderSource` gives.

Shapes: H, W image height and width in pixels.
"""

import bisect
import functools
import glob
import os
import re
from typing import Dict, List, Tuple

import grain.python as grain
import numpy as np
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message
from google.protobuf import message_factory

from experiments.data import images

TFDS_NAME = 'imagenet2012'
NUM_CLASSES = 1000
_SHARD = re.compile(r'-(\d+)-of-(\d+)$')


@functools.lru_cache(maxsize=1)
def example_class() -> type:
  """The `tensorflow.Example` protobuf message class, built without TF.

  Field numbers and types are those of TensorFlow's example.proto and
  feature.proto: Example{Features features = 1}, Features{map<string,
  Feature> feature = 1}, Feature{oneof kind: BytesList bytes_list = 1,
  FloatList float_list = 2, Int64List int64_list = 3}, and the three lists'
  `repeated value = 1` (float and int64 packed, as proto3 does).
  """
  f = descriptor_pb2.FieldDescriptorProto
  file = descriptor_pb2.FileDescriptorProto(
    name='perceiver/tf_example.proto', package='tensorflow', syntax='proto3'
  )

  def add(msg, name, number, kind, label=f.LABEL_OPTIONAL, type_name=None):
    field = msg.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
      field.type_name = type_name
    return field

  for name, kind in (
    ('BytesList', f.TYPE_BYTES),
    ('FloatList', f.TYPE_FLOAT),
    ('Int64List', f.TYPE_INT64),
  ):
    add(file.message_type.add(name=name), 'value', 1, kind, f.LABEL_REPEATED)
  feature = file.message_type.add(name='Feature')
  feature.oneof_decl.add(name='kind')
  kinds = ('BytesList', 'FloatList', 'Int64List')
  for number, (name, kind) in enumerate(
    zip(('bytes_list', 'float_list', 'int64_list'), kinds), start=1
  ):
    add(feature, name, number, f.TYPE_MESSAGE, type_name=f'.tensorflow.{kind}')
    feature.field[-1].oneof_index = 0
  features = file.message_type.add(name='Features')
  entry = features.nested_type.add(name='FeatureEntry')
  entry.options.map_entry = True
  add(entry, 'key', 1, f.TYPE_STRING)
  add(entry, 'value', 2, f.TYPE_MESSAGE, type_name='.tensorflow.Feature')
  add(
    features,
    'feature',
    1,
    f.TYPE_MESSAGE,
    f.LABEL_REPEATED,
    '.tensorflow.Features.FeatureEntry',
  )
  example = file.message_type.add(name='Example')
  add(example, 'features', 1, f.TYPE_MESSAGE, type_name='.tensorflow.Features')
  pool = descriptor_pool.DescriptorPool()  # private: no clash with TF's
  pool.Add(file)
  return message_factory.GetMessageClass(
    pool.FindMessageTypeByName('tensorflow.Example')
  )


def _version_key(path: str) -> Tuple[int, ...]:
  return tuple(int(p) for p in re.findall(r'\d+', os.path.basename(path)))


def find_shards(root: str, split: str, *, field: str = 'data.dir') -> List[str]:
  """The ArrayRecord shards of `split`, in shard order.

  Args:
    root: the TFDS data directory (holding `imagenet2012/<version>/`), the
      `imagenet2012` directory, or a version directory itself. Where several
      versions hold the split, the highest version is read.
    split: the TFDS split name, 'train' or 'validation'.
    field: the config field that gave `root`, named in errors.

  Returns:
    The shard paths, sorted by shard number.

  Raises:
    ValueError: `root` is not a directory, no directory under it holds
      shards of the split, or the shards found are not one complete set
      (`-NNNNN-of-MMMMM` numbers 0..MMMMM-1).
  """
  if not root or not os.path.isdir(root):
    raise ValueError(f'{field}: expected an existing directory, got {root!r}.')
  pattern = f'{TFDS_NAME}-{split}.array_record-*'
  candidates = [root] + sorted(
    glob.glob(os.path.join(glob.escape(root), '*'))
    + glob.glob(os.path.join(glob.escape(root), TFDS_NAME, '*')),
    key=_version_key,
    reverse=True,
  )
  for directory in candidates:
    shards = glob.glob(os.path.join(glob.escape(directory), pattern))
    if shards:
      break
  else:
    raise ValueError(
      f'{field}: expected TFDS {TFDS_NAME} ArrayRecord shards '
      f'{pattern!r} in {root!r}, in {root!r}/<version>/ or in '
      f'{root!r}/{TFDS_NAME}/<version>/, found none (prepare them with '
      '`tfds build imagenet2012 --file_format=array_record`).'
    )
  numbered = []
  for shard in shards:
    match = _SHARD.search(shard)
    number = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
    numbered.append((number, shard))
  numbered.sort()
  total = numbered[0][0][1]
  if [n for n, _ in numbered] != [(i, total) for i in range(total)]:
    names = sorted(os.path.basename(s) for s in shards)
    raise ValueError(
      f'{field}: expected the complete shard set {pattern[:-1]}NNNNN-of-'
      f'MMMMM in {directory!r}, got {len(shards)} files: {names[:5]}.'
    )
  return [shard for _, shard in numbered]


class TfdsImageNetSource:
  """TFDS `imagenet2012` ArrayRecord shards as a grain random-access source.

  Record i is the i-th record of the shards in shard order (TFDS's own
  order), so indices are stable across processes and runs. Only the shard
  paths and their record counts are pickled to grain workers; each worker
  opens the files it reads.
  """

  def __init__(self, root: str, split: str, *, field: str = 'data.dir'):
    """Finds the shards of `split` (see `find_shards`) and counts records.

    Raises:
      ValueError: as `find_shards`, or if the shards hold no record.
    """
    self.paths = tuple(find_shards(root, split, field=field))
    self._shards = [grain.ArrayRecordDataSource(p) for p in self.paths]
    self._ends = np.cumsum([len(s) for s in self._shards]).tolist()
    if not self._ends[-1]:
      raise ValueError(
        f'{field}: the {split!r} shards in {root!r} hold no records.'
      )

  def __len__(self) -> int:
    return self._ends[-1]

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    """Record `index`: {'image': uint8 [H, W, 3], 'label': int32 []}.

    Raises:
      IndexError: `index` outside [0, len).
      images.CorruptRecordError: naming the shard and index, if the record
        is not an `Example` with one encoded `image` and one `label` in
        [0, 1000), or the image does not decode.
    """
    if not 0 <= index < len(self):
      raise IndexError(f'index: expected [0, {len(self)}), got {index}.')
    shard = bisect.bisect_right(self._ends, index)
    local = index - (self._ends[shard - 1] if shard else 0)
    where = f'{self.paths[shard]} (record {local}; index {index})'
    try:
      example = example_class().FromString(self._shards[shard][local])
    except message.DecodeError as e:
      raise images.CorruptRecordError(
        f'{where}: not a tf.train.Example ({e}).'
      ) from e
    feature = example.features.feature
    image = feature['image'].bytes_list.value if 'image' in feature else []
    label = feature['label'].int64_list.value if 'label' in feature else []
    if len(image) != 1 or len(label) != 1 or not 0 <= label[0] < NUM_CLASSES:
      raise images.CorruptRecordError(
        f'{where}: expected one bytes feature "image" and one int64 feature '
        f'"label" in [0, {NUM_CLASSES}), got image x{len(image)}, label '
        f'{list(label)}.'
      )
    return {
      'image': images.decode_image(image[0], where),
      'label': np.int32(label[0]),
    }

  def __repr__(self) -> str:
    return f'TfdsImageNetSource({len(self)} records, {len(self.paths)} shards)'
