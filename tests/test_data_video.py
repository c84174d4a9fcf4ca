"""Video/audio decoding and the Kinetics / AudioSet sources, on clips the
tests encode themselves with PyAV.

Each test clip encodes its own timing: frame k is a flat colour whose red
value is 20 + 7 k (so the decoded red value gives the frame index back), with
a 24-pixel blue band at the left and right edges (gone after a centre crop),
and its audio is the chirp sin(2 pi (200 t + 300 t^2)) of the stream time t
(a unique phase at every instant, so any misalignment shows).
"""

import fractions
import os
import pickle

import av
import numpy as np
import pytest

from experiments.data import video as V

WIDTH, HEIGHT, BAND = 96, 48, 24


def chirp(t):
  return 0.5 * np.sin(2 * np.pi * (200 * t + 300 * t**2))


def write_clip(
  path,
  num_frames,
  fps,
  rate=48000,
  channels=2,
  right=None,
  vcodec='ffv1',
  acodec='flac',
  with_audio=True,
  audio_seconds=None,
):
  """Encodes a test clip; `right` replaces the right channel's signal."""
  pix_fmt = 'yuv444p' if vcodec == 'ffv1' else 'yuv420p'
  with av.open(path, 'w') as c:
    vs = c.add_stream(vcodec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, pix_fmt
    if vcodec == 'libx264':
      vs.options = {'qp': '0', 'g': '8'}  # keyframes every 8 frames
    if with_audio:
      st = c.add_stream(acodec, rate=rate)
      st.layout = 'stereo' if channels == 2 else 'mono'
    for k in range(num_frames):
      img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
      img[:] = (20 + 7 * k, 100, 160)
      img[:, :BAND] = img[:, -BAND:] = (0, 0, 255)
      frame = av.VideoFrame.from_ndarray(img, format='rgb24')
      frame.pts, frame.time_base = k, fractions.Fraction(1, fps)
      for p in vs.encode(frame):
        c.mux(p)
    for p in vs.encode():
      c.mux(p)
    if not with_audio:
      return path
    n = int(rate * (audio_seconds or num_frames / fps))
    x = chirp(np.arange(n) / rate).astype(np.float32)
    data = np.stack([x] * channels)
    if right is not None:
      data[1] = right(np.arange(n) / rate)
    for i in range(0, n, 1024):
      frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(data[:, i : i + 1024]),
        format='fltp',
        layout=st.layout.name,
      )
      frame.sample_rate, frame.pts = rate, i
      frame.time_base = fractions.Fraction(1, rate)
      for p in st.encode(frame):
        c.mux(p)
    for p in st.encode():
      c.mux(p)
  return path


def frame_indices(video):
  """Source frame index of each decoded frame, from its red value."""
  red = video[:, video.shape[1] // 2, video.shape[2] // 2, 0].astype(float)
  return np.round((red - 20) / 7).astype(int)


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  d = tmp_path_factory.mktemp('clips')
  return {
    '25': write_clip(str(d / 'a25.mkv'), 30, 25),
    # Audio past the video's end: no resampler edge in the last window.
    '30': write_clip(str(d / 'a30.mkv'), 33, 30, rate=44100, audio_seconds=1.3),
    'mono': write_clip(str(d / 'mono.mkv'), 30, 25, channels=1),
    'left': write_clip(str(d / 'left.mkv'), 30, 25, right=np.zeros_like),
    'mp4': write_clip(str(d / 'b.mp4'), 30, 25, vcodec='libx264', acodec='aac'),
    'short': write_clip(str(d / 'short.mkv'), 7, 25),
    'silent': write_clip(str(d / 'silent.mkv'), 30, 25, with_audio=False),
    'short_audio': write_clip(str(d / 'sa.mkv'), 30, 25, audio_seconds=0.5),
  }


SPEC = V.WindowSpec(num_frames=8, image_size=24)


@pytest.mark.parametrize(
  'name, source_fps, n',
  [
    ('25', 25, 0),
    ('25', 25, 5),
    ('25', 25, 22),
    ('30', 30, 0),
    ('30', 30, 7),
    ('30', 30, 20),
    ('mono', 25, 9),
  ],
)
def test_frames_on_the_25fps_grid_and_audio_aligned(clips, name, source_fps, n):
  path = clips[name]
  video, audio = V.decode_span(path, n, SPEC, SPEC.num_frames)
  assert video.shape == (8, 24, 24, 3) and video.dtype == np.uint8
  # Output frame i shows the source frame displayed at (n + i) / 25 s.
  times = (n + np.arange(8)) / 25
  expected = np.floor(times * source_fps + 1e-6).astype(int)
  np.testing.assert_array_equal(frame_indices(video), expected)
  # 8 frames * 48000 / 25 = 15,360 samples from the first frame's time.
  assert audio.shape == (15360,) and audio.dtype == np.float32
  t = n / 25 + np.arange(15360) / 48000
  tol = 2e-4 if source_fps == 25 else 1e-3  # 44.1 -> 48 kHz resampling
  np.testing.assert_allclose(audio, chirp(t), atol=tol)


def test_last_valid_window_and_one_past_it(clips):
  info = V.probe(clips['25'], SPEC)
  assert (info.video_start, info.video_end) == (0.0, 1.2)
  # 30 frames, 8 per window: starts 0..22.
  assert info.window_range(SPEC) == (0, 22)
  video, audio = V.decode_span(clips['25'], 22, SPEC, 8, info)
  np.testing.assert_array_equal(frame_indices(video), np.arange(22, 30))
  with pytest.raises(V.ClipError, match='a25.mkv: too short'):
    V.decode_span(clips['25'], 23, SPEC, 8, info)


def test_short_audio_limits_the_windows(clips):
  info = V.probe(clips['short_audio'], SPEC)
  # Audio lasts 0.5 s: a window of 0.32 s must start by 0.18 s = frame 4.
  assert info.window_range(SPEC) == (0, 4)
  assert info.window_range(V.WindowSpec(8, with_audio=False)) == (0, 22)


@pytest.mark.parametrize('size', [24, 16])
def test_resize_then_centre_crop(clips, size):
  video, _ = V.decode_span(clips['25'], 0, V.WindowSpec(2, image_size=size), 2)
  assert video.shape == (2, size, size, 3)
  # The 96 x 48 frame scaled to height `size` keeps its central 48 x 48:
  # no pixel of the blue side bands survives; all are the frame colour.
  expected = np.array([[20, 100, 160], [27, 100, 160]])
  np.testing.assert_allclose(
    video.reshape(2, -1, 3),
    np.broadcast_to(expected[:, None], (2, size * size, 3)),
    atol=3,
  )


def test_downmix_averages_the_channels(clips):
  _, audio = V.decode_span(clips['left'], 3, SPEC, 8)
  t = 3 / 25 + np.arange(15360) / 48000
  np.testing.assert_allclose(audio, chirp(t) / 2, atol=2e-4)


def test_h264_aac_mp4_after_a_keyframe_seek(clips):
  video, audio = V.decode_span(clips['mp4'], 10, SPEC, 8)
  np.testing.assert_array_equal(frame_indices(video), np.arange(10, 18))
  t = 10 / 25 + np.arange(15360) / 48000
  np.testing.assert_allclose(audio, chirp(t), atol=0.05)


def record(path, index=3):
  return {
    'path': np.asarray(path),
    'label': np.int32(1),
    'index': np.asarray(index, np.int32),
  }


OPS = dict(num_frames=8, image_size=24)


def test_random_window_start_from_rng_only(clips):
  r = record(clips['25'])
  firsts = set()
  for seed in range(60):
    out = V.random_window(r, np.random.default_rng(seed), **OPS)
    assert set(out) == {'image', 'audio', 'label', 'index'}
    assert out['image'].shape == (8, 24, 24, 3)
    assert out['audio'].shape == (15360, 1)
    first = frame_indices(out['image'])
    np.testing.assert_array_equal(first, first[0] + np.arange(8))
    t = first[0] / 25 + np.arange(15360) / 48000
    np.testing.assert_allclose(out['audio'][:, 0], chirp(t), atol=2e-4)
    firsts.add(int(first[0]))
  assert firsts <= set(range(23)) and len(firsts) > 15
  a = V.random_window(r, np.random.default_rng(7), **OPS)
  b = V.random_window(r, np.random.default_rng(7), **OPS)
  np.testing.assert_array_equal(a['image'], b['image'])


@pytest.mark.parametrize('position, first', [(0.0, 0), (0.5, 11), (1.0, 22)])
def test_fixed_window(clips, position, first):
  out = V.fixed_window(record(clips['25']), position=position, **OPS)
  np.testing.assert_array_equal(
    frame_indices(out['image']), first + np.arange(8)
  )


def test_spaced_windows_equal_single_windows(clips):
  out = V.spaced_windows(record(clips['25']), num_windows=4, **OPS)
  assert out['image'].shape == (4, 8, 24, 24, 3)
  assert out['audio'].shape == (4, 15360, 1)
  # Starts 0, 22/3, 44/3, 22 rounded: 0, 7, 15, 22.
  for k, n in enumerate([0, 7, 15, 22]):
    video, audio = V.decode_span(clips['25'], n, SPEC, 8)
    np.testing.assert_array_equal(out['image'][k], video)
    np.testing.assert_allclose(out['audio'][k, :, 0], audio, atol=1e-6)


def test_without_audio(clips):
  out = V.fixed_window(record(clips['silent']), with_audio=False, **OPS)
  assert set(out) == {'image', 'label', 'index'}
  with pytest.raises(V.ClipError, match='record 3: .*silent.mkv: no audio'):
    V.fixed_window(record(clips['silent']), **OPS)


def test_bad_clips_name_the_file_and_record(clips, tmp_path):
  with pytest.raises(V.ClipError, match=r'record 5: .*short.mkv: too short'):
    V.random_window(record(clips['short'], 5), np.random.default_rng(0), **OPS)
  garbage = tmp_path / 'x_000001_000002.mp4'
  garbage.write_bytes(b'not a video' * 100)
  with pytest.raises(V.ClipError, match='record 3: .*x_000001_000002.mp4'):
    V.fixed_window(record(str(garbage)), **OPS)


def test_window_spec_checks():
  with pytest.raises(ValueError, match='audio_rate: expected a multiple'):
    V.WindowSpec(audio_rate=48000, fps=7)
  with pytest.raises(ValueError, match='num_frames: expected a positive'):
    V.WindowSpec(num_frames=0)


def write_text(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  return path


@pytest.fixture()
def kinetics(clips, tmp_path):
  root = tmp_path / 'kinetics'
  os.makedirs(root / 'train' / 'abseiling')
  os.makedirs(root / 'x' / 'y')
  good = {'id_with_under_a': clips['25'], '-dashed--id': clips['30']}
  for vid, src in good.items():
    os.symlink(src, root / 'train' / 'abseiling' / f'{vid}_000010_000020.mkv')
  os.symlink(clips['short'], root / 'x' / 'y' / 'shortone_000001_000011.mkv')
  csv = write_text(
    str(tmp_path / 'k.csv'),
    (
      'label,youtube_id,time_start,time_end,split\n'
      'zumba,id_with_under_a,10,20,train\n'
      'abseiling,-dashed--id,10,20,train\n'
      'abseiling,shortone,1,11,train\n'
      'abseiling,notondisk,0,10,train\n'
      'yoga,other,0,10,val\n'
    ),
  )
  return str(root), csv


def test_kinetics_source(kinetics):
  root, csv = kinetics
  with pytest.raises(
    ValueError,
    match=r'data.dir: 1 of 4 annotated clips .*'
    r'notondisk_000000_000010',
  ):
    V.kinetics_source(root, csv, 'train', SPEC)
  source, classes = V.kinetics_source(
    root, csv, 'train', SPEC, skip_bad=True, num_classes=3
  )
  assert classes == ['abseiling', 'yoga', 'zumba']
  assert len(source) == 2
  assert [int(source[i]['label']) for i in range(2)] == [2, 0]
  assert source[0]['path'].item().endswith('id_with_under_a_000010_000020.mkv')
  assert len(source.skipped) == 2
  assert source.skipped['notondisk_000000_000010'] == 'missing'
  (short_path,) = [k for k in source.skipped if k.endswith('.mkv')]
  assert 'shortone_000001_000011.mkv' in short_path
  assert 'too short' in source.skipped[short_path]
  same = pickle.loads(pickle.dumps(source))
  assert same[1]['path'] == source[1]['path']
  out = V.fixed_window(same[0], position=0.0, **OPS)
  np.testing.assert_array_equal(frame_indices(out['image']), np.arange(8))


def test_kinetics_errors(kinetics, tmp_path):
  root, csv = kinetics
  with pytest.raises(
    ValueError, match="no row of split 'test'.*'train', 'val'"
  ):
    V.read_kinetics(csv, 'test')
  with pytest.raises(ValueError, match='data.dir: expected an existing dir'):
    V.kinetics_source(str(tmp_path / 'nope'), csv, 'train', SPEC)
  with pytest.raises(ValueError, match='expected 700 classes'):
    V.kinetics_source(root, csv, 'train', SPEC, num_classes=700)
  bad = write_text(str(tmp_path / 'bad.csv'), 'youtube_id,split\nx,train\n')
  with pytest.raises(ValueError, match='expected columns'):
    V.read_kinetics(bad, 'train')
  dup = os.path.join(root, 'x', 'id_with_under_a_000010_000020.mp4')
  write_text(dup, '')
  with pytest.raises(ValueError, match='two files for clip'):
    V.find_clips(root, 'data.dir')


LABELS_CSV = (
  'index,mid,display_name\n'
  '0,/m/09x0r,"Speech"\n'
  '1,/m/05zppz,"Male speech, man speaking"\n'
  '2,/t/dd00088,"Gush"\n'
)
SEGMENTS_CSV = (
  '# Segments csv created Sun Mar  5 10:54:31 2017\n'
  '# num_ytids=2, num_segs=2, num_unique_labels=3, '
  'num_positive_labels=3\n'
  '# YTID, start_seconds, end_seconds, positive_labels\n'
  '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
  '-0RWZT-miFs, 420.000, 430.000, "/m/05zppz"\n'
)


def test_audioset_source(clips, tmp_path):
  labels = write_text(str(tmp_path / 'class_labels_indices.csv'), LABELS_CSV)
  segments = write_text(str(tmp_path / 'seg.csv'), SEGMENTS_CSV)
  root = tmp_path / 'audioset'
  os.makedirs(root)
  os.symlink(clips['25'], root / '--PJHxphWEs_000030_000040.mkv')
  os.symlink(clips['30'], root / '-0RWZT-miFs_000420_000430.mkv')
  source, names = V.audioset_source(str(root), segments, labels, SPEC)
  assert names == ['Speech', 'Male speech, man speaking', 'Gush']
  np.testing.assert_array_equal(source[0]['label'], [1, 0, 1])
  np.testing.assert_array_equal(source[1]['label'], [0, 1, 0])
  assert source[1]['label'].dtype == np.float32
  unknown = write_text(
    str(tmp_path / 'u.csv'), SEGMENTS_CSV.replace('/m/05zppz', '/m/unknown')
  )
  with pytest.raises(ValueError, match="label '/m/unknown', not in the label"):
    V.audioset_source(str(root), unknown, labels, SPEC)
  nohead = write_text(str(tmp_path / 'n.csv'), 'a,b\n')
  with pytest.raises(ValueError, match='expected a "# YTID'):
    V.read_audioset_segments(nohead, ['/m/x'])


def test_vendored_big_buck_bunny():
  spec = V.WindowSpec(image_size=32)
  info = V.probe(V.BIG_BUCK_BUNNY, spec)
  assert (info.video_end, info.source_fps, info.audio_end) == (5.28, 25, 5.312)
  # 132 frames: windows of 16 start at frames 0..116.
  assert info.window_range(spec) == (0, 116)
  with av.open(V.BIG_BUCK_BUNNY) as c:
    assert c.streams.audio[0].layout.name == '5.1'
    assert c.streams.audio[0].rate == 48000
  video, audio = V.decode_span(V.BIG_BUCK_BUNNY, 116, spec, 16, info)
  assert video.shape == (16, 32, 32, 3) and audio.shape == (30720,)
  # Real content: frames change over the window and the sound is not silent.
  assert np.abs(np.diff(video.astype(float), axis=0)).mean() > 0.5
  assert 1e-3 < np.sqrt(np.mean(audio**2)) and np.abs(audio).max() <= 1


def test_clip_windows_and_window_at(clips):
  source = V.clip_windows(clips['25'], [3, 22])
  assert len(source) == 2 and int(source[1]['start']) == 22
  out = V.window_at(source[1], **OPS)
  assert set(out) == {'image', 'audio', 'label', 'index'}
  np.testing.assert_array_equal(frame_indices(out['image']), np.arange(22, 30))
  with pytest.raises(V.ClipError, match=r'record 0: .*start 23 is outside'):
    V.window_at(V.clip_windows(clips['25'], [23])[0], **OPS)
