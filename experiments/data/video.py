"""Video + audio clips decoded with PyAV, and Kinetics / AudioSet on disk.

A clip is read as a window of T frames on a fixed `fps` grid (25 fps in the
paper; a file with another frame rate is resampled by sample-and-hold: output
frame i shows the source frame displayed at time `start + i / fps`), each frame
resized so that its shorter side is `image_size` and centre-cropped to a
square, and the audio of exactly the same span, resampled to `audio_rate`
(48 kHz) and downmixed to mono by PyAV's `AudioResampler` (FFmpeg's
libswresample). With the paper's values a window is 16 frames of 224 x 224
and 16 * 48000 / 25 = 30,720 audio samples (Perceiver IO Sec. 4.3, App. I).

Window starts lie on the clip's own `fps` grid, `start = v0 + n / fps` (v0:
time of the first video frame), so for a 25 fps file every output frame is a
source frame and the audio starts exactly at the first frame's time. The
valid n are those whose window is covered by both streams.

On disk (nothing is downloaded):
- Kinetics: the annotation CSV `label,youtube_id,time_start,time_end,split`
  (Kay et al. 2017; one file per split or all in one) and a directory with
  the clips anywhere under it, named `<youtube_id>_<start:06d>_<end:06d>.<ext>`
  (e.g. `abc_000010_000020.mp4`), as the community downloaders store them.
- AudioSet (Gemmeke et al. 2017): a segment CSV (`YTID, start_seconds,
  end_seconds, positive_labels`, with `#` comment lines at the top) and the
  ontology's label index `class_labels_indices.csv` (`index,mid,display_name`);
  clips named like Kinetics ones with whole seconds,
  `<YTID>_<int(start):06d>_<int(end):06d>.<ext>`, each file holding its
  10-second segment.

Grain contract: `ClipSource` is a picklable random-access source whose
records are `{'path': str [], 'label': ..., 'index': int32 []}` (no file is
opened); the ops `random_window` (training: uniform window start from `rng`),
`fixed_window` (evaluation), `spaced_windows` (evaluation by averaging
overlapping windows) and `window_at` (the windows of `clip_windows`) decode
the clip and replace 'path' by 'image' and 'audio'.

Clips that cannot be read or are shorter than one window raise `ClipError`
naming the file and the record index. With `skip_bad=True` the source probes
every file when it is built and drops such clips (and missing files),
reporting each path and reason and counting them in `source.skipped`.

Shapes: T frames per window, S output image size, A = T * audio_rate / fps
audio samples per window, K windows per record, C classes.
"""

import collections
import csv
import dataclasses
import fractions
import math
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import av
import numpy as np

# The vendored real clip (Big Buck Bunny, CC-BY 3.0; see SOURCE.md).
BIG_BUCK_BUNNY = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'bigbuckbunny_320x180.mp4'
)
FPS = 25
AUDIO_RATE = 48_000
NUM_FRAMES = 16
IMAGE_SIZE = 224
VIDEO_EXTENSIONS = ('.avi', '.m4v', '.mkv', '.mov', '.mp4', '.webm')
KINETICS_COLUMNS = ('label', 'youtube_id', 'time_start', 'time_end', 'split')
AUDIOSET_COLUMNS = ('YTID', 'start_seconds', 'end_seconds', 'positive_labels')
LABEL_INDEX_COLUMNS = ('index', 'mid', 'display_name')
# Frame times are compared with this tolerance (seconds): far below one frame
# and above the rounding of any container time base.
_TIME_EPS = 1e-4
# Audio is decoded this far past the window (seconds), so that the
# resampler's filter delay is flushed out of it.
_AUDIO_MARGIN = 0.1
_DURATION_TAG = re.compile(r'^(\d+):(\d\d):(\d\d(?:\.\d+)?)$')
_CLIP_NAME = re.compile(r'^(?P<id>.+)_(?P<start>\d{6})_(?P<end>\d{6})$')


class ClipError(RuntimeError):
  """A clip cannot be decoded, or is too short for one window."""


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """What one window is: T frames at `fps`, S x S pixels, audio at a rate.

  Attributes:
    num_frames: T, frames per window.
    fps: frame rate of the output grid (frames per second).
    image_size: S, side of the square output frames (pixels).
    audio_rate: output audio sample rate (Hz); a multiple of `fps`.
    with_audio: decode the audio (a clip without an audio stream is then an
      error).
  """

  num_frames: int = NUM_FRAMES
  fps: int = FPS
  image_size: int = IMAGE_SIZE
  audio_rate: int = AUDIO_RATE
  with_audio: bool = True

  def __post_init__(self):
    for name in ('num_frames', 'fps', 'image_size', 'audio_rate'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'{name}: expected a positive integer, got {value!r}.')
    if self.audio_rate % self.fps:
      raise ValueError(
        f'audio_rate: expected a multiple of fps={self.fps} (a whole number '
        f'of samples per frame), got {self.audio_rate}.'
      )

  @property
  def samples_per_frame(self) -> int:
    return self.audio_rate // self.fps

  @property
  def num_samples(self) -> int:
    """A, audio samples per window."""
    return self.num_frames * self.samples_per_frame


@dataclasses.dataclass(frozen=True)
class ClipInfo:
  """Stream extents of a clip, in seconds of the container's clock.

  Attributes:
    video_start: presentation time of the first video frame.
    video_end: end of the last video frame's display.
    source_fps: the video stream's average frame rate.
    audio_start, audio_end: extent of the audio (None without audio).
  """

  video_start: float
  video_end: float
  source_fps: float
  audio_start: Optional[float]
  audio_end: Optional[float]

  def window_range(self, spec: WindowSpec) -> Tuple[int, int]:
    """Valid window starts `video_start + n / fps`, as [n_min, n_max].

    A window needs the frames at `start + i / fps` (i < T) to exist and, with
    audio, the audio to cover [start, start + T / fps]. n_max < n_min means
    the clip is shorter than one window.
    """
    fps = spec.fps
    n_min = 0
    # Frame T-1 at start + (T-1)/fps must be shown before the video ends.
    n_max = math.floor(
      (self.video_end - self.video_start - _TIME_EPS) * fps
      - (spec.num_frames - 1)
    )
    if spec.with_audio:
      n_min = max(
        0, math.ceil((self.audio_start - self.video_start - _TIME_EPS) * fps)
      )
      n_max = min(
        n_max,
        math.floor(
          (self.audio_end - self.video_start + _TIME_EPS) * fps
          - spec.num_frames
        ),
      )
    return n_min, n_max


def _seconds(value, time_base) -> Optional[float]:
  return None if value is None else float(value * time_base)


def probe(path: str, spec: WindowSpec) -> ClipInfo:
  """Reads a clip's stream extents from its headers (decodes nothing).

  Args:
    path: a video file any FFmpeg demuxer reads.
    spec: the window (says whether audio is needed).

  Returns:
    The clip's `ClipInfo`.

  Raises:
    ClipError: the file cannot be opened, has no video stream (or no audio
      stream while `spec.with_audio`), or states no duration.
  """
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise ClipError(f'{path}: no video stream.')
      total = _seconds(container.duration, fractions.Fraction(1, av.time_base))
      origin = _seconds(
        container.start_time, fractions.Fraction(1, av.time_base)
      )
      vs = container.streams.video[0]
      rate = vs.average_rate or vs.guessed_rate
      if not rate:
        raise ClipError(f'{path}: the video stream states no frame rate.')
      v0, vd = _extent(vs, total, origin, path)
      a0 = ad = None
      if spec.with_audio:
        if not container.streams.audio:
          raise ClipError(f'{path}: no audio stream.')
        a0, ad = _extent(container.streams.audio[0], total, origin, path)
  except av.FFmpegError as e:
    raise ClipError(f'{path}: cannot be read by FFmpeg: {e}') from e
  return ClipInfo(
    video_start=v0,
    video_end=v0 + vd,
    source_fps=float(rate),
    audio_start=a0,
    audio_end=None if a0 is None else a0 + ad,
  )


def _extent(stream, total, origin, path) -> Tuple[float, float]:
  """(start, duration) of a stream in seconds.

  The duration comes from the stream header, else from the DURATION tag that
  FFmpeg's Matroska / WebM muxer writes per stream, else from the file.
  """
  start = _seconds(stream.start_time, stream.time_base)
  if start is None:
    start = origin or 0.0
  duration = _seconds(stream.duration, stream.time_base)
  tag = _DURATION_TAG.match(stream.metadata.get('DURATION', ''))
  if duration is None and tag:
    h, m, sec = tag.groups()
    duration = int(h) * 3600 + int(m) * 60 + float(sec)
  if duration is None:
    if total is None:
      raise ClipError(
        f'{path}: neither the stream nor the file states a duration.'
      )
    duration = total - (start - (origin or 0.0))
  return start, duration


def _resize_crop(frame, size: int) -> np.ndarray:
  """A decoded frame -> uint8 [S, S, 3] RGB: shorter side to S, centre crop."""
  h, w = frame.height, frame.width
  scale = size / min(h, w)
  new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
  rgb = frame.to_ndarray(
    width=new_w, height=new_h, format='rgb24', interpolation='AREA'
  )
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return rgb[top : top + size, left : left + size]


def _decode_frames(
  container,
  start: float,
  spec: WindowSpec,
  num_frames: int,
  info: ClipInfo,
  path: str,
) -> np.ndarray:
  """uint8 [num_frames, S, S, 3]: the frames shown at start + i / fps."""
  vs = container.streams.video[0]
  vs.thread_type = 'AUTO'
  targets = start + np.arange(num_frames) / spec.fps
  for seek_to in (start, None):  # a seek that lands late: decode from 0
    if seek_to is None:
      container.seek(0)
    else:
      container.seek(
        max(0, math.floor(seek_to / vs.time_base)), stream=vs, backward=True
      )
    out: List[np.ndarray] = []
    previous, previous_rgb, late = None, None, False
    for frame in container.decode(vs):
      if frame.pts is None:
        raise ClipError(f'{path}: a video frame has no timestamp.')
      t = float(frame.pts * vs.time_base)
      while len(out) < num_frames and t > targets[len(out)] + _TIME_EPS:
        if previous is None:
          late = True
          break
        if previous_rgb is None:
          previous_rgb = _resize_crop(previous, spec.image_size)
        out.append(previous_rgb)
      if late or len(out) == num_frames:
        break
      previous, previous_rgb = frame, None
    if late and seek_to is not None:
      continue
    if late:
      raise ClipError(
        f'{path}: no video frame at {targets[0]:.3f} s (the first one is '
        f'later).'
      )
    # End of stream: the last frame is shown until the video ends.
    while len(out) < num_frames and previous is not None:
      if targets[len(out)] >= info.video_end - _TIME_EPS:
        break
      if previous_rgb is None:
        previous_rgb = _resize_crop(previous, spec.image_size)
      out.append(previous_rgb)
    if len(out) < num_frames:
      raise ClipError(
        f'{path}: too short: {len(out)} of {num_frames} frames from '
        f'{start:.3f} s.'
      )
    return np.stack(out)
  raise AssertionError('unreachable')


def _decode_audio(
  container, start: float, spec: WindowSpec, num_samples: int, path: str
) -> np.ndarray:
  """float32 [num_samples] mono audio at spec.audio_rate from `start`.

  The audio is decoded from the start of the stream and its samples counted,
  so the window is placed to the sample even where the container rounds
  timestamps (Matroska / WebM keep milliseconds: up to 22 samples at
  44.1 kHz after a seek).
  """
  stream = container.streams.audio[0]
  container.seek(0)
  # FFmpeg's downmix matrix, scaled to sum to 1 (a weighted average of the
  # channels: (L + R) / 2 for stereo), so mono never exceeds [-1, 1].
  resampler = av.AudioResampler(
    format='flt',
    layout='mono',
    rate=spec.audio_rate,
    options={'rematrix_maxval': '1.0'},
  )
  chunks: List[np.ndarray] = []
  first_time = None  # time of the first resampled sample
  have = 0
  end = start + num_samples / spec.audio_rate

  def take(frames):
    nonlocal first_time, have
    for out in frames:
      if first_time is None:
        if out.pts is None:
          raise ClipError(f'{path}: an audio frame has no timestamp.')
        first_time = float(out.pts * out.time_base)
      chunk = out.to_ndarray().reshape(-1)
      chunks.append(chunk)
      have += chunk.shape[0]

  for frame in container.decode(stream):
    take(resampler.resample(frame))
    if first_time is not None and first_time + have / spec.audio_rate > (
      end + _AUDIO_MARGIN
    ):
      break
  else:
    take(resampler.resample(None))
  if first_time is None:
    raise ClipError(f'{path}: no audio after {start:.3f} s.')
  offset = round((start - first_time) * spec.audio_rate)
  if offset < 0:
    raise ClipError(
      f'{path}: the audio starts at {first_time:.4f} s, after the window '
      f'start {start:.4f} s.'
    )
  samples = np.concatenate(chunks)[offset : offset + num_samples]
  if samples.shape[0] < num_samples:
    raise ClipError(
      f'{path}: too short: {samples.shape[0]} of {num_samples} audio samples '
      f'from {start:.3f} s.'
    )
  return samples.astype(np.float32)


def decode_span(
  path: str,
  n: int,
  spec: WindowSpec,
  num_frames: int,
  info: Optional[ClipInfo] = None,
):
  """Decodes `num_frames` grid frames from grid index `n`, and their audio.

  Args:
    path: the clip.
    n: first frame on the grid: time `info.video_start + n / spec.fps`.
    spec: the window (fps, image size, audio rate, whether audio).
    num_frames: frames to decode (T for one window; more for overlapping
      windows cut from one span).
    info: the clip's `probe` result (probed if None).

  Returns:
    video: uint8 [num_frames, S, S, 3], RGB.
    audio: float32 [num_frames * audio_rate / fps] mono in [-1, 1], starting
      at the first frame's time (an empty array without audio).

  Raises:
    ClipError: the file cannot be decoded or the span is not in the clip.
  """
  info = probe(path, spec) if info is None else info
  start = info.video_start + n / spec.fps
  try:
    with av.open(path) as container:
      video = _decode_frames(container, start, spec, num_frames, info, path)
      if spec.with_audio:
        audio = _decode_audio(
          container, start, spec, num_frames * spec.samples_per_frame, path
        )
      else:
        audio = np.zeros((0,), np.float32)
  except av.FFmpegError as e:
    raise ClipError(f'{path}: decoding failed: {e}') from e
  return video, audio


def _window_range(record, spec: WindowSpec) -> Tuple[str, ClipInfo, int, int]:
  path = str(record['path'])
  try:
    info = probe(path, spec)
  except ClipError as e:
    raise ClipError(f'record {int(record["index"])}: {e}') from e
  n_min, n_max = info.window_range(spec)
  if n_max < n_min:
    raise ClipError(
      f'record {int(record["index"])}: {path}: too short for one window of '
      f'{spec.num_frames} frames at {spec.fps} fps (video '
      f'{info.video_start:.3f}-{info.video_end:.3f} s, audio '
      f'{info.audio_start}-{info.audio_end} s).'
    )
  return path, info, n_min, n_max


def _decoded(record, path, n, spec, num_frames, info):
  try:
    video, audio = decode_span(path, n, spec, num_frames, info)
  except ClipError as e:
    raise ClipError(f'record {int(record["index"])}: {e}') from e
  out = {k: v for k, v in record.items() if k != 'path'}
  return out, video, audio


def _window(record, path, n, spec, num_frames, info, with_audio):
  """The record (without 'path') with the window's 'image' and 'audio'."""
  out, video, audio = _decoded(record, path, n, spec, num_frames, info)
  out['image'] = video
  if with_audio:
    out['audio'] = audio[:, None]
  return out


def _spec(num_frames, fps, image_size, audio_rate, with_audio) -> WindowSpec:
  return WindowSpec(num_frames, fps, image_size, audio_rate, with_audio)


def random_window(
  record: Mapping[str, np.ndarray],
  rng: np.random.Generator,
  *,
  num_frames: int = NUM_FRAMES,
  fps: int = FPS,
  image_size: int = IMAGE_SIZE,
  audio_rate: int = AUDIO_RATE,
  with_audio: bool = True,
) -> Dict[str, np.ndarray]:
  """Training op: one window whose start is uniform over the valid grid.

  Args:
    record: a `ClipSource` record ('path', 'label', 'index').
    rng: the only source of randomness (the window start).
    num_frames, fps, image_size, audio_rate, with_audio: see `WindowSpec`.

  Returns:
    The record without 'path', plus 'image' uint8 [T, S, S, 3] and 'audio'
    float32 [A, 1] (absent when `with_audio` is False).

  Raises:
    ClipError: naming the record index and file.
  """
  spec = _spec(num_frames, fps, image_size, audio_rate, with_audio)
  path, info, n_min, n_max = _window_range(record, spec)
  n = int(rng.integers(n_min, n_max + 1))
  return _window(record, path, n, spec, num_frames, info, with_audio)


def fixed_window(
  record: Mapping[str, np.ndarray],
  *,
  position: float = 0.5,
  num_frames: int = NUM_FRAMES,
  fps: int = FPS,
  image_size: int = IMAGE_SIZE,
  audio_rate: int = AUDIO_RATE,
  with_audio: bool = True,
) -> Dict[str, np.ndarray]:
  """Evaluation op: the window at `position` in [0, 1] of the valid starts.

  0 is the first valid window, 1 the last, 0.5 the central one. Returns and
  raises as `random_window`.
  """
  if not 0.0 <= position <= 1.0:
    raise ValueError(
      f'position: expected a number in [0, 1], got {position!r}.'
    )
  spec = _spec(num_frames, fps, image_size, audio_rate, with_audio)
  path, info, n_min, n_max = _window_range(record, spec)
  n = n_min + round(position * (n_max - n_min))
  return _window(record, path, n, spec, num_frames, info, with_audio)


def window_at(
  record: Mapping[str, np.ndarray],
  *,
  num_frames: int = NUM_FRAMES,
  fps: int = FPS,
  image_size: int = IMAGE_SIZE,
  audio_rate: int = AUDIO_RATE,
  with_audio: bool = True,
) -> Dict[str, np.ndarray]:
  """Deterministic op: the window starting at grid frame `record['start']`.

  Returns the record without 'path' and 'start', plus 'image' and 'audio'
  as `random_window`; raises `ClipError` (naming the record index and file)
  if that window is not in the clip.
  """
  spec = _spec(num_frames, fps, image_size, audio_rate, with_audio)
  path, info, n_min, n_max = _window_range(record, spec)
  n = int(record['start'])
  if not n_min <= n <= n_max:
    raise ClipError(
      f'record {int(record["index"])}: {path}: window start {n} is outside '
      f'the valid starts [{n_min}, {n_max}].'
    )
  out = _window(record, path, n, spec, num_frames, info, with_audio)
  del out['start']
  return out


def spaced_windows(
  record: Mapping[str, np.ndarray],
  *,
  num_windows: int = 16,
  num_frames: int = NUM_FRAMES,
  fps: int = FPS,
  image_size: int = IMAGE_SIZE,
  audio_rate: int = AUDIO_RATE,
  with_audio: bool = True,
) -> Dict[str, np.ndarray]:
  """Evaluation op: K windows with starts evenly spread over the clip.

  Window k starts at grid index `n_min + round(k (n_max - n_min) / (K - 1))`
  (they overlap when the clip is shorter than K windows, e.g. 16 windows of
  32 frames over AudioSet's 10 s; Perceiver IO App. C). The span they cover
  is decoded once.

  Returns:
    The record without 'path', plus 'image' uint8 [K, T, S, S, 3] and
    'audio' float32 [K, A, 1] (absent without audio).

  Raises:
    ClipError: naming the record index and file.
  """
  if (
    isinstance(num_windows, bool)
    or not isinstance(num_windows, int)
    or (num_windows <= 0)
  ):
    raise ValueError(
      f'num_windows: expected a positive integer, got {num_windows!r}.'
    )
  spec = _spec(num_frames, fps, image_size, audio_rate, with_audio)
  path, info, n_min, n_max = _window_range(record, spec)
  if num_windows == 1:
    starts = np.array([n_min + (n_max - n_min) // 2])
  else:
    starts = n_min + np.round(
      np.arange(num_windows) * (n_max - n_min) / (num_windows - 1)
    ).astype(int)
  span = int(starts[-1] - starts[0]) + num_frames
  out, video, audio = _decoded(record, path, int(starts[0]), spec, span, info)
  offsets = starts - starts[0]
  out['image'] = np.stack([video[o : o + num_frames] for o in offsets])
  if with_audio:
    a = spec.samples_per_frame
    out['audio'] = np.stack(
      [audio[o * a : o * a + spec.num_samples, None] for o in offsets]
    )
  return out


# ---------------------------------------------------------------------------
# Annotation files and clip lookup.
# ---------------------------------------------------------------------------


def clip_key(video_id: str, start: float, end: float) -> str:
  """The file stem of a clip: `<id>_<start:06d>_<end:06d>` (whole seconds)."""
  return f'{video_id}_{int(start):06d}_{int(end):06d}'


def find_clips(directory: str, field: str) -> Dict[str, str]:
  """Maps clip stems to paths, for clip files anywhere under `directory`.

  Args:
    directory: searched recursively for files named
      `<id>_<start:06d>_<end:06d>.<ext>`, ext in VIDEO_EXTENSIONS.
    field: the config field that named `directory` (for errors).

  Returns:
    {stem: path}.

  Raises:
    ValueError: `directory` does not exist, or two files have the same stem.
  """
  if not os.path.isdir(directory):
    raise ValueError(
      f'{field}: expected an existing directory, got {directory!r}.'
    )
  found: Dict[str, str] = {}
  for root, _, files in os.walk(directory):
    for name in files:
      stem, ext = os.path.splitext(name)
      if ext.lower() not in VIDEO_EXTENSIONS or not _CLIP_NAME.match(stem):
        continue
      path = os.path.join(root, name)
      if stem in found:
        raise ValueError(
          f'{field}: two files for clip {stem!r}: {found[stem]!r} and '
          f'{path!r}; keep one.'
        )
      found[stem] = path
  return found


def _read_csv(
  path: str, field: str, columns: Sequence[str], comment: bool = False
) -> List[Dict[str, str]]:
  """Rows of a CSV whose header has `columns` (order free, extras allowed)."""
  if not os.path.isfile(path):
    raise ValueError(f'{field}: expected an existing CSV file, got {path!r}.')
  with open(path, newline='', encoding='utf-8') as f:
    lines = list(f)
  header_at = 0
  if comment:
    # AudioSet: '# Segments csv ...', '# num_ytids=...', '# YTID, ...'.
    while header_at < len(lines) and lines[header_at].startswith('#'):
      header_at += 1
    if header_at == 0:
      raise ValueError(
        f'{field}: expected a "# YTID, ..." header line in '
        f'{path!r}, got {lines[:1]!r}.'
      )
    lines[header_at - 1] = lines[header_at - 1].lstrip('#')
    header_at -= 1
  reader = csv.reader(lines[header_at:], skipinitialspace=True)
  header = [h.strip() for h in next(reader, [])]
  missing = [c for c in columns if c not in header]
  if missing:
    raise ValueError(
      f'{field}: expected columns {list(columns)} in {path!r}, got header '
      f'{header}.'
    )
  rows = []
  for line_no, values in enumerate(reader, start=header_at + 2):
    if not values:
      continue
    if len(values) != len(header):
      raise ValueError(
        f'{field}: line {line_no} of {path!r} has {len(values)} fields, '
        f'expected {len(header)}: {values!r}.'
      )
    rows.append(dict(zip(header, (v.strip() for v in values))))
  return rows


def read_kinetics(path: str, split: str, field: str = 'data.annotations'):
  """Reads a Kinetics annotation CSV.

  Args:
    path: CSV with header `label,youtube_id,time_start,time_end,split`.
    split: keep rows whose split column equals this (e.g. 'train', 'val',
      'validate' as the file spells it).
    field: config field naming `path` (for errors).

  Returns:
    classes: sorted class names of all rows (every split), [C].
    rows: list of (stem, class index) for the split's rows.

  Raises:
    ValueError: missing file or columns, or no row of `split`.
  """
  rows = _read_csv(path, field, KINETICS_COLUMNS)
  classes = sorted({r['label'] for r in rows})
  index = {c: i for i, c in enumerate(classes)}
  kept = [
    (
      clip_key(r['youtube_id'], float(r['time_start']), float(r['time_end'])),
      index[r['label']],
    )
    for r in rows
    if r['split'] == split
  ]
  if not kept:
    splits = sorted({r['split'] for r in rows})
    raise ValueError(
      f'{field}: no row of split {split!r} in {path!r}; it has {splits}.'
    )
  return classes, kept


def read_audioset_labels(path: str, field: str = 'data.labels'):
  """Reads the ontology's `class_labels_indices.csv` -> (mids, names), [C]."""
  rows = _read_csv(path, field, LABEL_INDEX_COLUMNS)
  indices = [int(r['index']) for r in rows]
  if indices != list(range(len(rows))):
    raise ValueError(
      f'{field}: expected indices 0..{len(rows) - 1} in order in {path!r}, '
      f'got {indices[:10]}...'
    )
  return [r['mid'] for r in rows], [r['display_name'] for r in rows]


def read_audioset_segments(
  path: str, mids: Sequence[str], field: str = 'data.segments'
):
  """Reads an AudioSet segment CSV.

  Args:
    path: e.g. `balanced_train_segments.csv`: `#` comment lines, the header
      `# YTID, start_seconds, end_seconds, positive_labels`, then rows such as
      `--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"`.
    mids: the class mids in index order (`read_audioset_labels`).
    field: config field naming `path` (for errors).

  Returns:
    list of (stem, multi-hot float32 [C]).

  Raises:
    ValueError: bad file, or a label mid not in `mids`.
  """
  rows = _read_csv(path, field, AUDIOSET_COLUMNS, comment=True)
  index = {m: i for i, m in enumerate(mids)}
  out = []
  for r in rows:
    target = np.zeros((len(mids),), np.float32)
    for mid in r['positive_labels'].split(','):
      if mid not in index:
        raise ValueError(
          f'{field}: segment {r["YTID"]} of {path!r} has label {mid!r}, not '
          f'in the label index ({len(mids)} classes).'
        )
      target[index[mid]] = 1.0
    key = clip_key(
      r['YTID'], float(r['start_seconds']), float(r['end_seconds'])
    )
    out.append((key, target))
  return out


# ---------------------------------------------------------------------------
# The source.
# ---------------------------------------------------------------------------


class ClipSource:
  """Grain random-access source of clip records (picklable; opens nothing).

  `source[i]` is `{'path': str [], 'label': int32 [] or float32 [C],
  'index': int32 []}`, plus 'start': int32 [] (a window's first grid frame,
  for `window_at`) if `starts` is given. `skipped` maps each dropped clip's
  path (or stem, if missing) to the reason.
  """

  def __init__(
    self,
    paths: Sequence[str],
    labels: np.ndarray,
    skipped: Optional[Mapping[str, str]] = None,
    starts: Optional[Sequence[int]] = None,
  ):
    if len(paths) != len(labels):
      raise ValueError(
        f'labels: expected {len(paths)} labels (one per path), '
        f'got {len(labels)}.'
      )
    if starts is not None and len(starts) != len(paths):
      raise ValueError(
        f'starts: expected {len(paths)} window starts (one per path), '
        f'got {len(starts)}.'
      )
    self.paths = tuple(paths)
    self.labels = np.asarray(labels)
    self.skipped = dict(skipped or {})
    self.starts = None if starts is None else np.asarray(starts, np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self.paths):
      raise IndexError(
        f'index: expected 0..{len(self.paths) - 1}, got {index}.'
      )
    record = {
      'path': np.asarray(self.paths[index]),
      'label': self.labels[index],
      'index': np.asarray(index, np.int32),
    }
    if self.starts is not None:
      record['start'] = self.starts[index]
    return record


def clip_windows(path: str, starts: Sequence[int], label=np.int32(0)):
  """A `ClipSource` of fixed windows of one clip (for `window_at`).

  Args:
    path: the clip.
    starts: first grid frame of each window (see `ClipInfo.window_range`).
    label: every record's label.
  """
  return ClipSource(
    [path] * len(starts), np.stack([label] * len(starts)), starts=starts
  )


def build_source(
  rows,
  clips: Mapping[str, str],
  spec: WindowSpec,
  *,
  skip_bad: bool,
  field: str,
) -> ClipSource:
  """A `ClipSource` of annotated rows whose clips are on disk.

  Args:
    rows: (stem, label) pairs from an annotation file.
    clips: {stem: path} (`find_clips`).
    spec: the window every clip must hold (probed only if `skip_bad`).
    skip_bad: drop (and count, and report) missing, unreadable and too-short
      clips; otherwise a missing clip raises here and an unreadable one when
      its record is decoded.
    field: config field naming the clip directory (for errors).

  Returns:
    The source.

  Raises:
    ValueError: clips are missing and `skip_bad` is False, or none is left.
  """
  missing = [stem for stem, _ in rows if stem not in clips]
  if missing and not skip_bad:
    raise ValueError(
      f'{field}: {len(missing)} of {len(rows)} annotated clips are not under '
      f'the directory, e.g. {missing[:5]}; set data.skip_bad=True to skip '
      'them.'
    )
  skipped = {stem: 'missing' for stem in missing}
  paths, labels = [], []
  for stem, label in rows:
    if stem not in clips:
      continue
    path = clips[stem]
    if skip_bad:
      try:
        n_min, n_max = probe(path, spec).window_range(spec)
        if n_max < n_min:
          raise ClipError(f'{path}: too short for one window.')
      except ClipError as e:
        skipped[path] = str(e)
        continue
    paths.append(path)
    labels.append(label)
  if skipped:
    reasons = collections.Counter(
      'missing' if v == 'missing' else 'unreadable or too short'
      for v in skipped.values()
    )
    logging.warning(
      '%s: skipped %d clips (%s).', field, len(skipped), dict(reasons)
    )
    for where, why in skipped.items():
      logging.warning('skipped %s: %s', where, why)
  if not paths:
    raise ValueError(
      f'{field}: no usable clip for the annotations '
      f'({len(rows)} rows, {len(skipped)} skipped).'
    )
  return ClipSource(paths, np.stack(labels), skipped)


def kinetics_source(
  directory: str,
  annotations: str,
  split: str,
  spec: WindowSpec,
  *,
  skip_bad: bool = False,
  num_classes: Optional[int] = None,
):
  """Kinetics clips of one split; returns (source, class names).

  Args:
    directory: the clip directory (config field `data.dir`).
    annotations: the annotation CSV (`data.annotations`).
    split: the split to keep (`data.train_split` / `data.eval_split`).
    spec: the window.
    skip_bad: see `build_source`.
    num_classes: if given, the number of classes the CSV must have.

  Raises:
    ValueError: as `find_clips`, `read_kinetics`, `build_source`, or a
      class count other than `num_classes`.
  """
  classes, rows = read_kinetics(annotations, split)
  if num_classes is not None and len(classes) != num_classes:
    raise ValueError(
      f'data.annotations: expected {num_classes} classes in {annotations!r}, '
      f'got {len(classes)}.'
    )
  rows = [(stem, np.int32(label)) for stem, label in rows]
  clips = find_clips(directory, 'data.dir')
  source = build_source(rows, clips, spec, skip_bad=skip_bad, field='data.dir')
  return source, classes


def audioset_source(
  directory: str,
  segments: str,
  labels: str,
  spec: WindowSpec,
  *,
  skip_bad: bool = False,
):
  """AudioSet segments with local clips; returns (source, class names).

  Records' 'label' is the float32 [C] multi-hot of the positive labels.
  Raises as `kinetics_source`.
  """
  mids, names = read_audioset_labels(labels)
  rows = read_audioset_segments(segments, mids)
  clips = find_clips(directory, 'data.dir')
  source = build_source(rows, clips, spec, skip_bad=skip_bad, field='data.dir')
  return source, names
