"""Optical-flow files and data sets read from disk, as grain sources.

Shapes: H, W image height and width in pixels; channel 0 of a flow is u
(along x / width, positive to the right), channel 1 is v (along y / height,
positive down). A flow maps pixel (x, y) of frame 1 to (x + u, y + v) in
frame 2.

Every source is a grain random-access data source (`__len__`,
`__getitem__`): it lists its files when built (picklable lists of paths),
reads them lazily, and returns records

  {'frame1': uint8 [H, W, 3], 'frame2': uint8 [H, W, 3],
   'flow': float32 [H, W, 2] pixels, 'valid': bool [H, W]}

(`SintelSource(..., occlusions=True)` adds 'occluded': bool [H, W]).
Records of one source may differ in size (Sintel is 436 x 1024, KITTI images
vary); crop or tile them before batching.

File formats:
* Middlebury `.flo` (Baker et al. 2011; Sintel, FlyingChairs, AutoFlow):
  little-endian float32 magic 202021.25, int32 width, int32 height, then
  height x width interleaved float32 (u, v), row-major.
* KITTI 2015 flow (Menze & Geiger 2015): 16-bit RGB PNG; u = (R - 2^15) / 64,
  v = (G - 2^15) / 64, B = 1 where the flow is known, 0 elsewhere. Pillow
  reads 16-bit RGB PNGs as 8-bit, so PyAV (FFmpeg's PNG codec) reads and
  writes them.

Layouts (what the data sets' archives unpack to):
* MPI-Sintel: `<root>/training/{clean,final}/<scene>/frame_NNNN.png`,
  `training/flow/<scene>/frame_NNNN.flo` (frame NNNN -> NNNN + 1), and where
  present `training/occlusions/...png` and `training/invalid/...png`
  (white = occluded / invalid).
* KITTI 2015: `<root>/training/image_2/NNNNNN_10.png`, `NNNNNN_11.png` and
  `training/flow_occ/NNNNNN_10.png`.
* FlyingChairs: `<root>/data/NNNNN_img1.ppm`, `NNNNN_img2.ppm`,
  `NNNNN_flow.flo`, and optionally `<root>/FlyingChairs_train_val.txt`
  (one line per pair: 1 = train, 2 = validation).
* AutoFlow (Sun et al. 2021), as released at autoflow-google.github.io:
  `<root>/static_40k_png_{1..4}_of_4/table_T_batch_B/{im0.png, im1.png,
  forward.flo}`, 40,000 pairs of 448 x 576 (the layout that the public
  loaders, e.g. ptlflow's, read; the Perceiver IO paper trained on 400,000
  pairs, of which only these 40,000 are public).
"""

import glob
import os
import re
import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from skimage import measure
from skimage import transform

Record = Dict[str, np.ndarray]

FLO_MAGIC = 202021.25
KITTI_SCALE = 64.0
KITTI_OFFSET = 2.0**15
SINTEL_PASSES = ('clean', 'final')
CHAIRS_SPLITS = ('all', 'train', 'val')


# ---------------------------------------------------------------------------
# Middlebury .flo
# ---------------------------------------------------------------------------


def read_flo(path: str) -> np.ndarray:
  """Reads a Middlebury `.flo` file.

  Args:
    path: the file.

  Returns:
    float32 [H, W, 2] flow (u, v) in pixels.

  Raises:
    ValueError: naming the file, if the magic number is not 202021.25, the
      size is not positive, or the file is not 12 + 8 H W bytes long.
  """
  with open(path, 'rb') as f:
    data = f.read()
  if len(data) < 12:
    raise ValueError(
      f'{path}: expected a .flo file (12-byte header), got {len(data)} bytes.'
    )
  magic, width, height = struct.unpack('<fii', data[:12])
  if magic != FLO_MAGIC:
    raise ValueError(
      f'{path}: expected the .flo magic number {FLO_MAGIC}, got {magic}.'
    )
  if width <= 0 or height <= 0:
    raise ValueError(
      f'{path}: expected a positive width and height, got {width} x {height}.'
    )
  expected = 12 + 8 * width * height
  if len(data) != expected:
    raise ValueError(
      f'{path}: expected {expected} bytes for {width} x {height} flow, '
      f'got {len(data)}.'
    )
  flow = np.frombuffer(data, '<f4', offset=12).reshape(height, width, 2)
  return flow.astype(np.float32)


def write_flo(path: str, flow_HW2) -> None:
  """Writes `flow_HW2` (float [H, W, 2], pixels) as a Middlebury `.flo`."""
  flow_HW2 = _check_flow('flow', flow_HW2)
  height, width = flow_HW2.shape[:2]
  with open(path, 'wb') as f:
    f.write(struct.pack('<fii', FLO_MAGIC, width, height))
    f.write(flow_HW2.astype('<f4').tobytes())


def _check_flow(name: str, flow) -> np.ndarray:
  flow = np.asarray(flow)
  if flow.ndim != 3 or flow.shape[-1] != 2 or 0 in flow.shape:
    raise ValueError(f'{name}: expected shape [H, W, 2], got {flow.shape}.')
  if not np.issubdtype(flow.dtype, np.floating):
    raise ValueError(f'{name}: expected a float array, got {flow.dtype}.')
  return flow


# ---------------------------------------------------------------------------
# KITTI 16-bit PNG flow
# ---------------------------------------------------------------------------


def read_kitti_flow(path: str) -> Tuple[np.ndarray, np.ndarray]:
  """Reads a KITTI 2015 flow PNG (16-bit RGB).

  Returns:
    flow: float32 [H, W, 2], u, v = (value - 2^15) / 64 pixels, 0 where
      unknown.
    valid: bool [H, W], the third channel being non-zero.

  Raises:
    ValueError: naming the file, if it is not a 16-bit RGB PNG.
  """
  import av  # pylint: disable=g-import-not-at-top

  try:
    with av.open(path) as container:
      frame = next(container.decode(video=0))
      fmt = frame.format.name
      if fmt not in ('rgb48be', 'rgb48le'):
        raise ValueError(f'expected a 16-bit RGB PNG, got pixel format {fmt}')
      rgb = frame.to_ndarray(format='rgb48le')
  except (av.error.FFmpegError, StopIteration) as e:
    raise ValueError(f'{path}: not a readable PNG: {e}') from e
  except ValueError as e:
    raise ValueError(f'{path}: {e}.') from e
  valid = rgb[..., 2] > 0
  flow = (rgb[..., :2].astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
  flow[~valid] = 0.0
  return flow, valid


def write_kitti_flow(path: str, flow_HW2, valid_HW) -> None:
  """Writes a KITTI 2015 flow PNG.

  Args:
    path: a `.png` file name.
    flow_HW2: float [H, W, 2] in pixels; stored as round(64 f + 2^15), so
      values must lie in [-512, 512).
    valid_HW: bool [H, W]; invalid pixels are stored as (0, 0, 0).

  Raises:
    ValueError: on bad shapes or flow outside the representable range.
  """
  import av  # pylint: disable=g-import-not-at-top

  flow_HW2 = _check_flow('flow', flow_HW2)
  valid_HW = np.asarray(valid_HW, bool)
  if valid_HW.shape != flow_HW2.shape[:2]:
    raise ValueError(
      f'valid: expected shape {flow_HW2.shape[:2]}, got {valid_HW.shape}.'
    )
  coded = np.round(flow_HW2.astype(np.float64) * KITTI_SCALE + KITTI_OFFSET)
  coded[~valid_HW] = 0
  if coded.min() < 0 or coded.max() > 65535:
    raise ValueError(
      'flow: expected values in [-512, 512) pixels (KITTI 16-bit range), '
      f'got [{flow_HW2[valid_HW].min()}, {flow_HW2[valid_HW].max()}].'
    )
  rgb = np.dstack([coded, valid_HW]).astype(np.uint16)
  height, width = valid_HW.shape
  frame = av.VideoFrame.from_ndarray(rgb, format='rgb48le')
  with av.open(path, 'w', format='image2') as container:
    stream = container.add_stream('png')
    stream.width, stream.height, stream.pix_fmt = width, height, 'rgb48be'
    for packet in stream.encode(frame):
      container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


# ---------------------------------------------------------------------------
# Images and masks
# ---------------------------------------------------------------------------


def read_rgb(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB pixels of an 8-bit image file (PNG, PPM, ...)."""
  with Image.open(path) as image:
    if image.mode not in ('RGB', 'RGBA', 'L', 'P'):
      raise ValueError(
        f'{path}: expected an 8-bit image, got mode {image.mode}.'
      )
    return np.asarray(image.convert('RGB'))


def read_mask(path: str) -> np.ndarray:
  """bool [H, W]: the non-black pixels of a mask image."""
  with Image.open(path) as image:
    return np.asarray(image.convert('L')) > 127


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def _require_dir(arg_name: str, path: str) -> None:
  if not os.path.isdir(path):
    raise ValueError(
      f'{arg_name}: expected an existing directory, got {path!r}.'
    )


def _natural_key(path: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path)]


class FlowPairSource:
  """Pairs listed as file paths, read lazily (a grain random-access source).

  Subclasses fill `self._items` with one tuple of paths per pair and define
  `_load(item) -> Record`.
  """

  _items: List[Tuple[str, ...]]

  def __len__(self) -> int:
    return len(self._items)

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    if not 0 <= index < len(self._items):
      raise IndexError(
        f'index: expected an integer in [0, {len(self._items)}), got {index}.'
      )
    item = self._items[index]
    try:
      record = self._load(item)
      _check_record(record)
    except (OSError, ValueError, SyntaxError) as e:
      raise ValueError(
        f'{type(self).__name__}[{index}]: cannot read the pair '
        f'{list(item)}: {e}'
      ) from e
    return record

  def _load(self, item: Tuple[str, ...]) -> Record:
    raise NotImplementedError

  def paths(self, index: int) -> Tuple[str, ...]:
    """The files of pair `index`."""
    return self._items[index]


def _check_record(record: Record) -> None:
  shape = record['frame1'].shape
  for key, want in (
    ('frame2', shape),
    ('flow', shape[:2] + (2,)),
    ('valid', shape[:2]),
  ):
    if record[key].shape != want:
      raise ValueError(
        f'{key}: expected shape {want} (that of frame1), got '
        f'{record[key].shape}'
      )


def _pair(frame1: str, frame2: str, flow, valid) -> Record:
  return {
    'frame1': read_rgb(frame1),
    'frame2': read_rgb(frame2),
    'flow': np.asarray(flow, np.float32),
    'valid': np.asarray(valid, bool),
  }


class SintelSource(FlowPairSource):
  """MPI-Sintel (Butler et al. 2012) training pairs of one pass.

  `valid` is False where `training/invalid` marks a pixel (all True when that
  directory is absent); with `occlusions=True` records also carry
  'occluded' from `training/occlusions`.
  """

  def __init__(
    self,
    root: str,
    *,
    dstype: str = 'clean',
    occlusions: bool = False,
    arg_name: str = 'root',
  ):
    """Lists the pairs.

    Args:
      root: the directory holding `training/`.
      dstype: 'clean' or 'final' (the rendering pass).
      occlusions: whether to add the occlusion masks.
      arg_name: the config field `root` came from, for error messages.

    Raises:
      ValueError: a missing directory, no pairs, or a flow file without its
        two frames.
    """
    if dstype not in SINTEL_PASSES:
      raise ValueError(
        f'dstype: expected one of {list(SINTEL_PASSES)}, got {dstype!r}.'
      )
    train = os.path.join(root, 'training')
    flow_dir = os.path.join(train, 'flow')
    image_dir = os.path.join(train, dstype)
    _require_dir(arg_name, root)
    _require_dir(f'{arg_name} (training/flow)', flow_dir)
    _require_dir(f'{arg_name} (training/{dstype})', image_dir)
    occ_dir = os.path.join(train, 'occlusions')
    if occlusions:
      _require_dir(f'{arg_name} (training/occlusions)', occ_dir)
    invalid_dir = os.path.join(train, 'invalid')
    self._occlusions = occlusions
    self._items = []
    flows = sorted(
      glob.glob(os.path.join(flow_dir, '*', 'frame_*.flo')), key=_natural_key
    )
    for flo in flows:
      scene = os.path.basename(os.path.dirname(flo))
      name = os.path.splitext(os.path.basename(flo))[0]
      number = int(name.split('_')[1])
      frame1 = os.path.join(image_dir, scene, f'{name}.png')
      frame2 = os.path.join(image_dir, scene, f'frame_{number + 1:04d}.png')
      for frame in (frame1, frame2):
        if not os.path.isfile(frame):
          raise ValueError(
            f'{arg_name}: {flo} has no frame {frame} in the {dstype} pass.'
          )
      invalid = os.path.join(invalid_dir, scene, f'{name}.png')
      occ = os.path.join(occ_dir, scene, f'{name}.png')
      self._items.append(
        (
          frame1,
          frame2,
          flo,
          invalid if os.path.isfile(invalid) else '',
          occ if occlusions else '',
        )
      )
    if not self._items:
      raise ValueError(
        f'{arg_name}: expected training/flow/<scene>/frame_NNNN.flo files '
        f'under {root!r}, found none.'
      )

  def _load(self, item):
    frame1, frame2, flo, invalid, occ = item
    flow = read_flo(flo)
    valid = ~read_mask(invalid) if invalid else np.ones(flow.shape[:2], bool)
    record = _pair(frame1, frame2, flow, valid)
    if self._occlusions:
      record['occluded'] = read_mask(occ)
    return record


class KittiSource(FlowPairSource):
  """KITTI 2015 training pairs (`flow_occ`: all pixels with ground truth)."""

  def __init__(self, root: str, *, arg_name: str = 'root'):
    """Lists `training/flow_occ/NNNNNN_10.png` and the matching frames.

    Raises:
      ValueError: a missing directory, no pairs or a missing frame.
    """
    flow_dir = os.path.join(root, 'training', 'flow_occ')
    image_dir = os.path.join(root, 'training', 'image_2')
    _require_dir(arg_name, root)
    _require_dir(f'{arg_name} (training/flow_occ)', flow_dir)
    _require_dir(f'{arg_name} (training/image_2)', image_dir)
    self._items = []
    for flow in sorted(glob.glob(os.path.join(flow_dir, '*_10.png'))):
      stem = os.path.basename(flow)[: -len('_10.png')]
      frames = [os.path.join(image_dir, f'{stem}_{i}.png') for i in (10, 11)]
      for frame in frames:
        if not os.path.isfile(frame):
          raise ValueError(f'{arg_name}: {flow} has no frame {frame}.')
      self._items.append((frames[0], frames[1], flow))
    if not self._items:
      raise ValueError(
        f'{arg_name}: expected training/flow_occ/NNNNNN_10.png files under '
        f'{root!r}, found none.'
      )

  def _load(self, item):
    frame1, frame2, flow_png = item
    flow, valid = read_kitti_flow(flow_png)
    return _pair(frame1, frame2, flow, valid)


class FlyingChairsSource(FlowPairSource):
  """FlyingChairs (Dosovitskiy et al. 2015): `data/NNNNN_{img1,img2,flow}`."""

  def __init__(self, root: str, *, split: str = 'all', arg_name: str = 'root'):
    """Lists the pairs.

    Args:
      root: the directory holding `data/`.
      split: 'all', or 'train' / 'val' as FlyingChairs_train_val.txt marks
        them (1 / 2; the file must then exist and have one line per pair).
      arg_name: the config field `root` came from, for error messages.

    Raises:
      ValueError: a missing directory or split file, no pairs, a missing
        image, or a split file of the wrong length.
    """
    if split not in CHAIRS_SPLITS:
      raise ValueError(
        f'split: expected one of {list(CHAIRS_SPLITS)}, got {split!r}.'
      )
    data_dir = os.path.join(root, 'data')
    _require_dir(arg_name, root)
    _require_dir(f'{arg_name} (data)', data_dir)
    flows = sorted(glob.glob(os.path.join(data_dir, '*_flow.flo')))
    items = []
    for flow in flows:
      stem = flow[: -len('_flow.flo')]
      frames = [f'{stem}_img1.ppm', f'{stem}_img2.ppm']
      for frame in frames:
        if not os.path.isfile(frame):
          raise ValueError(f'{arg_name}: {flow} has no image {frame}.')
      items.append((frames[0], frames[1], flow))
    if not items:
      raise ValueError(
        f'{arg_name}: expected data/NNNNN_flow.flo files under {root!r}, '
        'found none.'
      )
    if split != 'all':
      split_file = os.path.join(root, 'FlyingChairs_train_val.txt')
      if not os.path.isfile(split_file):
        raise ValueError(
          f'split: {split!r} needs {split_file}, which does not exist.'
        )
      marks = np.loadtxt(split_file, dtype=np.int64, ndmin=1)
      if len(marks) != len(items):
        raise ValueError(
          f'{split_file}: expected {len(items)} lines (one per pair), got '
          f'{len(marks)}.'
        )
      want = 1 if split == 'train' else 2
      items = [it for it, m in zip(items, marks) if m == want]
    self._items = items

  def _load(self, item):
    frame1, frame2, flo = item
    flow = read_flo(flo)
    return _pair(frame1, frame2, flow, np.ones(flow.shape[:2], bool))


class AutoFlowSource(FlowPairSource):
  """The released AutoFlow pairs (`static_40k_png_*_of_4/table_*_batch_*`)."""

  def __init__(self, root: str, *, arg_name: str = 'root'):
    """Lists every `<part>/table_T_batch_B/` holding im0, im1 and forward.flo.

    Raises:
      ValueError: a missing directory, no pairs, or a pair directory missing
        one of its three files.
    """
    _require_dir(arg_name, root)
    dirs = glob.glob(os.path.join(root, 'static_*', 'table_*_batch_*'))
    self._items = []
    for d in sorted(dirs, key=_natural_key):
      files = tuple(
        os.path.join(d, n) for n in ('im0.png', 'im1.png', 'forward.flo')
      )
      for f in files:
        if not os.path.isfile(f):
          raise ValueError(f'{arg_name}: the AutoFlow pair {d} has no {f}.')
      self._items.append(files)
    if not self._items:
      raise ValueError(
        f'{arg_name}: expected static_*_of_4/table_T_batch_B/ directories '
        f'under {root!r}, found none.'
      )

  def _load(self, item):
    frame1, frame2, flo = item
    flow = read_flo(flo)
    return _pair(frame1, frame2, flow, np.ones(flow.shape[:2], bool))


class ConcatSource:
  """Sources one after the other (index i of the second is len(first) + i)."""

  def __init__(self, sources: Sequence):
    if not sources:
      raise ValueError('sources: expected at least one source, got none.')
    self._sources = list(sources)
    self._ends = np.cumsum([len(s) for s in self._sources])

  def __len__(self) -> int:
    return int(self._ends[-1])

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(
        f'index: expected an integer in [0, {len(self)}), got {index}.'
      )
    k = int(np.searchsorted(self._ends, index, side='right'))
    start = int(self._ends[k - 1]) if k else 0
    return self._sources[k][index - start]


# ---------------------------------------------------------------------------
# A real pair with ground truth: the Middlebury 2014 motorcycle stereo pair.
# ---------------------------------------------------------------------------

MOTORCYCLE_PATH = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'motorcycle_half.npz'
)


def stereo_to_flow(disparity_HW) -> Tuple[np.ndarray, np.ndarray]:
  """Flow from the left to the right image of a rectified stereo pair.

  Middlebury disparities d belong to the left image: its pixel (x, y) is
  seen at (x - d, y) in the right image. With the left image as frame 1
  the flow is therefore u = -d, v = 0.

  Args:
    disparity_HW: float [H, W] left-image disparities in pixels; inf or NaN
      where unknown.

  Returns:
    flow: float32 [H, W, 2] (0 where unknown); valid: bool [H, W].
  """
  disparity_HW = np.asarray(disparity_HW, np.float64)
  if disparity_HW.ndim != 2:
    raise ValueError(
      f'disparity: expected shape [H, W], got {disparity_HW.shape}.'
    )
  valid = np.isfinite(disparity_HW)
  u = np.where(valid, -disparity_HW, 0.0)
  flow = np.stack([u, np.zeros_like(u)], axis=-1).astype(np.float32)
  return flow, valid


def load_motorcycle(path: Optional[str] = None) -> Record:
  """The vendored Middlebury 2014 'motorcycle' pair as a flow record.

  See SOURCE.md: scikit-image's copy (741 x 500), halved to 370 x 250 by
  `convert_skimage_flow.py`; disparities halved with the width.

  Returns:
    {'frame1': left uint8 [250, 370, 3], 'frame2': right uint8 [250, 370,
    3], 'flow': float32 [250, 370, 2] (u = -disparity, v = 0), 'valid': bool
    [250, 370]}.

  Raises:
    ValueError: the file is missing or does not hold left/right/disparity.
  """
  path = MOTORCYCLE_PATH if path is None else path
  try:
    with np.load(path, allow_pickle=False) as npz:
      left, right, disparity = npz['left'], npz['right'], npz['disparity']
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(
      f'{path}: expected the vendored motorcycle .npz with left, right and '
      f'disparity (restore it with git checkout): {e}'
    ) from e
  flow, valid = stereo_to_flow(disparity)
  record = {'frame1': left, 'frame2': right, 'flow': flow, 'valid': valid}
  _check_record(record)
  return record


# ---------------------------------------------------------------------------
# Per-record ops.
# ---------------------------------------------------------------------------


def downscale(record: Record, factor: int) -> Record:
  """The pair at 1/`factor` of its size, its flow in the new pixels.

  Frames are averaged over `factor` x `factor` blocks
  (`skimage.transform.downscale_local_mean`); a block's flow is the mean of
  its valid vectors divided by `factor`, valid only where every pixel of
  the block was (so unknown ground truth never mixes in). Rows and columns
  past the last whole block are dropped.

  Args:
    record: {'frame1', 'frame2' uint8 [H, W, 3], 'flow' [H, W, 2], 'valid'
      [H, W]}; H and W at least `factor`.
    factor: a positive integer (1 returns the record unchanged).

  Returns:
    {'frame1', 'frame2' uint8 [H // f, W // f, 3], 'flow' float32
    [H // f, W // f, 2], 'valid' bool [H // f, W // f]}.

  Raises:
    ValueError: `factor` is not a positive integer, or exceeds H or W.
  """
  if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
    raise ValueError(f'factor: expected a positive integer, got {factor!r}.')
  height, width = record['valid'].shape
  if factor > min(height, width):
    raise ValueError(
      f'factor: expected at most the frame size {height} x {width}, got '
      f'{factor}.'
    )
  if factor == 1:
    return record
  h, w = height // factor * factor, width // factor * factor
  blocks = (factor, factor)
  valid = record['valid'][:h, :w]
  flow = np.where(valid[..., None], record['flow'][:h, :w], 0.0)
  flow_sum = measure.block_reduce(flow, blocks + (1,), np.sum)
  count = measure.block_reduce(valid.astype(np.float64), blocks, np.sum)
  out = {
    'flow': (flow_sum / np.maximum(count, 1)[..., None] / factor).astype(
      np.float32
    ),
    'valid': count == factor * factor,
  }
  for k in ('frame1', 'frame2'):
    mean = transform.downscale_local_mean(
      record[k][:h, :w].astype(np.float64), blocks + (1,)
    )
    out[k] = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
  out['flow'] = np.where(out['valid'][..., None], out['flow'], 0.0)
  return out


def reverse_pair(record: Record) -> Record:
  """The pair fed backwards, with an approximate inverse flow.

  Perceiver IO App. H feeds each pair "forward and reversed" in the last
  training phase. The backward flow is approximated by splatting: each
  valid frame-1 pixel x carries -flow(x) to the nearest frame-2 pixel of
  x + flow(x); a frame-2 pixel is valid when it receives at least one
  vector and the vectors it receives agree within half a pixel (so
  disocclusions and occlusion boundaries are left out of the loss).

  Args:
    record: {'frame1', 'frame2', 'flow' [H, W, 2], 'valid' [H, W], ...}.

  Returns:
    The record with frames swapped and 'flow'/'valid' for frame 2 -> frame
    1 (other keys are dropped: they describe frame 1).
  """
  flow = record['flow'].astype(np.float64)
  valid = record['valid']
  height, width = valid.shape
  ys, xs = np.nonzero(valid)
  tx = np.rint(xs + flow[ys, xs, 0]).astype(np.int64)
  ty = np.rint(ys + flow[ys, xs, 1]).astype(np.int64)
  inside = (tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)
  target = ty[inside] * width + tx[inside]
  vectors = -flow[ys[inside], xs[inside]]  # [n, 2]
  n = height * width
  count = np.bincount(target, minlength=n)
  mean = (
    np.stack(
      [np.bincount(target, vectors[:, c], minlength=n) for c in range(2)], -1
    )
    / np.maximum(count, 1)[:, None]
  )
  spread = np.zeros((n, 2))
  for c in range(2):
    low = np.full(n, np.inf)
    high = np.full(n, -np.inf)
    np.minimum.at(low, target, vectors[:, c])
    np.maximum.at(high, target, vectors[:, c])
    spread[:, c] = np.where(count > 0, high - low, 0.0)
  back_valid = (count > 0) & (spread.max(-1) <= 0.5)
  back_flow = np.where(back_valid[:, None], mean, 0.0)
  return {
    'frame1': record['frame2'],
    'frame2': record['frame1'],
    'flow': back_flow.reshape(height, width, 2).astype(np.float32),
    'valid': back_valid.reshape(height, width),
  }


class ReversedPairs:
  """Each pair of `source` forward (index 2i) and reversed (2i + 1).

  The source for Perceiver IO's final phase: every pair is seen in both
  directions in each epoch (`reverse_pair` gives the reversed record).
  """

  def __init__(
    self, source, reverse: Callable[[Record], Record] = reverse_pair
  ):
    self._source = source
    self._reverse = reverse

  def __len__(self) -> int:
    return 2 * len(self._source)

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(
        f'index: expected an integer in [0, {len(self)}), got {index}.'
      )
    record = self._source[index // 2]
    return self._reverse(record) if index % 2 else record
