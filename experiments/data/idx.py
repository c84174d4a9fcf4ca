"""The IDX array format of MNIST and Fashion-MNIST.

Format (LeCun et al., the MNIST page, "file formats"): a 4-byte magic number
`0x00 0x00 <type> <ndim>`, then `ndim` big-endian uint32 dimension sizes,
then the values in C order, big-endian. Type codes: 0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64. Files are read plain,
gzip-compressed (`.gz`, as distributed) or xz-compressed (`.xz`, as vendored
here), by their suffix.
"""

import gzip
import lzma
import os

import numpy as np

_DTYPES = {
  0x08: np.dtype('u1'),
  0x09: np.dtype('i1'),
  0x0B: np.dtype('>i2'),
  0x0C: np.dtype('>i4'),
  0x0D: np.dtype('>f4'),
  0x0E: np.dtype('>f8'),
}
_OPENERS = {'.gz': gzip.open, '.xz': lzma.open}


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file into an array.

  Args:
    path: an IDX file, optionally ending in `.gz` or `.xz`.

  Returns:
    The array, with the file's shape and dtype in native byte order.

  Raises:
    ValueError: the file is missing, cannot be decompressed, or is not IDX
      (bad magic number, unknown type code, or a payload whose size differs
      from the header's shape).
  """
  if not os.path.isfile(path):
    raise ValueError(f'path: expected an IDX file, got {path!r}.')
  opener = _OPENERS.get(os.path.splitext(path)[1].lower(), open)
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError, lzma.LZMAError) as e:
    raise ValueError(f'{path}: not a readable IDX file ({e}).') from e
  if len(data) < 4 or data[0] or data[1] or data[2] not in _DTYPES:
    raise ValueError(
      f'{path}: expected the IDX magic number 00 00 <type> <ndim> with type '
      f'in {[hex(t) for t in _DTYPES]}, got {data[:4].hex(" ")}.'
    )
  dtype, ndim = _DTYPES[data[2]], data[3]
  header = 4 + 4 * ndim
  shape = tuple(int(n) for n in np.frombuffer(data[4:header], '>u4'))
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(shape) != ndim or len(data) - header != expected:
    raise ValueError(
      f'{path}: the IDX header gives shape {shape} of {dtype.name} '
      f'({expected} bytes), but the file holds {len(data) - header} bytes '
      'after the header.'
    )
  array = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder('='))
