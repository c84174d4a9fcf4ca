"""Flow file readers and sources, on files the tests write in the published
formats (the .flo header and the KITTI PNG are written byte by byte here,
independently of the code under test)."""

import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from experiments.data import flow as F


def _write_flo_bytes(path, flow):
  """Middlebury .flo written by hand: magic, width, height, (u, v) rows."""
  h, w, _ = flow.shape
  with open(path, 'wb') as f:
    f.write(struct.pack('<f', 202021.25))
    f.write(struct.pack('<ii', w, h))
    for y in range(h):
      for x in range(w):
        f.write(struct.pack('<ff', flow[y, x, 0], flow[y, x, 1]))


def _write_png16_rgb(path, rgb):
  """A 16-bit RGB PNG from the PNG specification: signature, IHDR (bit depth
  16, colour type 2), one zlib IDAT of filter-0 rows, IEND."""
  h, w, _ = rgb.shape

  def chunk(kind, data):
    body = kind + data
    return (
      struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))
    )

  raw = b''.join(b'\x00' + rgb[y].astype('>u2').tobytes() for y in range(h))
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n')
    f.write(chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0)))
    f.write(chunk(b'IDAT', zlib.compress(raw)))
    f.write(chunk(b'IEND', b''))


def _image(rng, h, w):
  return rng.integers(0, 256, (h, w, 3)).astype(np.uint8)


# ---------------------------------------------------------------------------
# .flo
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('shape', [(1, 1), (3, 5), (7, 2)])
def test_read_flo_matches_hand_written_file(tmp_path, shape):
  flow = np.random.default_rng(0).normal(size=shape + (2,)).astype(np.float32)
  path = str(tmp_path / 'a.flo')
  _write_flo_bytes(path, flow)
  out = F.read_flo(path)
  assert out.dtype == np.float32 and out.shape == shape + (2,)
  np.testing.assert_array_equal(out, flow)


def test_write_flo_bytes_are_the_published_layout(tmp_path):
  flow = np.array([[[1.5, -2.0], [3.0, 4.25]]], np.float32)  # H=1, W=2
  path = str(tmp_path / 'b.flo')
  F.write_flo(path, flow)
  with open(path, 'rb') as f:
    data = f.read()
  assert data == struct.pack('<fii4f', 202021.25, 2, 1, 1.5, -2.0, 3.0, 4.25)


@pytest.mark.parametrize(
  'header, body_floats, match',
  [
    (struct.pack('<fii', 1.0, 2, 2), 8, 'magic'),
    (struct.pack('<fii', 202021.25, 0, 2), 0, 'positive'),
    (struct.pack('<fii', 202021.25, 2, 2), 7, 'expected 44 bytes'),
  ],
)
def test_read_flo_rejects_bad_files_naming_them(
  tmp_path, header, body_floats, match
):
  path = str(tmp_path / 'bad.flo')
  with open(path, 'wb') as f:
    f.write(header + b'\x00' * 4 * body_floats)
  with pytest.raises(ValueError, match=match) as e:
    F.read_flo(path)
  assert 'bad.flo' in str(e.value)


# ---------------------------------------------------------------------------
# KITTI PNG
# ---------------------------------------------------------------------------


def test_read_kitti_flow_decodes_the_published_coding(tmp_path):
  rng = np.random.default_rng(1)
  h, w = 4, 6
  u = rng.integers(-2000, 2000, (h, w))
  v = rng.integers(-2000, 2000, (h, w))
  valid = rng.random((h, w)) > 0.3
  rgb = np.stack([u + 2**15, v + 2**15, valid], -1)
  path = str(tmp_path / '000000_10.png')
  _write_png16_rgb(path, rgb)
  flow, out_valid = F.read_kitti_flow(path)
  np.testing.assert_array_equal(out_valid, valid)
  # (value - 2^15) / 64, hand-computed on the integers above.
  np.testing.assert_allclose(flow[valid, 0], u[valid] / 64.0)
  np.testing.assert_allclose(flow[valid, 1], v[valid] / 64.0)
  assert (flow[~valid] == 0).all()


def test_write_kitti_flow_round_trips_and_checks_range(tmp_path):
  rng = np.random.default_rng(2)
  flow = (rng.integers(-6400, 6400, (5, 3, 2)) / 64.0).astype(np.float32)
  valid = rng.random((5, 3)) > 0.5
  path = str(tmp_path / 'k.png')
  F.write_kitti_flow(path, flow, valid)
  back, back_valid = F.read_kitti_flow(path)
  np.testing.assert_array_equal(back_valid, valid)
  np.testing.assert_array_equal(back[valid], flow[valid])
  with Image.open(path) as im:  # a PNG others can open
    assert im.size == (3, 5)
  with pytest.raises(ValueError, match='512'):
    F.write_kitti_flow(path, np.full((2, 2, 2), 600.0), np.ones((2, 2)))


def test_read_kitti_flow_rejects_8bit_png(tmp_path):
  path = str(tmp_path / 'eight.png')
  Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
  with pytest.raises(ValueError, match='16-bit') as e:
    F.read_kitti_flow(path)
  assert 'eight.png' in str(e.value)


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def _make_sintel(root, rng, scenes=(('alley_1', 3), ('bamboo_2', 2))):
  expected = []
  for scene, frames in scenes:
    for dstype in ('clean', 'final'):
      os.makedirs(root / 'training' / dstype / scene)
    for sub in ('flow', 'occlusions', 'invalid'):
      os.makedirs(root / 'training' / sub / scene)
    images = {}
    for i in range(1, frames + 1):
      for dstype in ('clean', 'final'):
        im = _image(rng, 4, 6)
        images[dstype, i] = im
        Image.fromarray(im).save(
          root / 'training' / dstype / scene / f'frame_{i:04d}.png'
        )
    for i in range(1, frames):
      flow = rng.normal(size=(4, 6, 2)).astype(np.float32)
      _write_flo_bytes(
        root / 'training' / 'flow' / scene / f'frame_{i:04d}.flo', flow
      )
      occ = rng.random((4, 6)) > 0.5
      invalid = rng.random((4, 6)) > 0.8
      for sub, mask in (('occlusions', occ), ('invalid', invalid)):
        Image.fromarray((mask * 255).astype(np.uint8)).save(
          root / 'training' / sub / scene / f'frame_{i:04d}.png'
        )
      expected.append((images, i, flow, occ, invalid))
  return expected


@pytest.mark.parametrize('dstype', ['clean', 'final'])
def test_sintel_source(tmp_path, dstype):
  expected = _make_sintel(tmp_path, np.random.default_rng(3))
  source = F.SintelSource(str(tmp_path), dstype=dstype, occlusions=True)
  assert len(source) == 3  # 2 + 1 flows
  for index, (images, i, flow, occ, invalid) in enumerate(expected):
    r = source[index]
    np.testing.assert_array_equal(r['frame1'], images[dstype, i])
    np.testing.assert_array_equal(r['frame2'], images[dstype, i + 1])
    np.testing.assert_array_equal(r['flow'], flow)
    np.testing.assert_array_equal(r['valid'], ~invalid)
    np.testing.assert_array_equal(r['occluded'], occ)
  # Picklable (grain workers receive it) and deterministic.
  again = pickle.loads(pickle.dumps(source))[2]
  np.testing.assert_array_equal(again['flow'], source[2]['flow'])


def test_sintel_without_invalid_masks_is_all_valid(tmp_path):
  _make_sintel(tmp_path, np.random.default_rng(4), scenes=(('cave_2', 2),))
  import shutil

  shutil.rmtree(tmp_path / 'training' / 'invalid')
  r = F.SintelSource(str(tmp_path))[0]
  assert r['valid'].all() and 'occluded' not in r


def test_kitti_source(tmp_path):
  rng = np.random.default_rng(5)
  for sub in ('image_2', 'flow_occ'):
    os.makedirs(tmp_path / 'training' / sub)
  frames = {}
  for n in range(2):
    for t in (10, 11):
      frames[n, t] = _image(rng, 5, 7)
      Image.fromarray(frames[n, t]).save(
        tmp_path / 'training' / 'image_2' / f'{n:06d}_{t}.png'
      )
    rgb = np.stack(
      [
        np.full((5, 7), 2**15 + 64 * (n + 1)),
        np.full((5, 7), 2**15 - 32),
        np.ones((5, 7)),
      ],
      -1,
    )
    rgb[0, 0, 2] = 0
    _write_png16_rgb(
      str(tmp_path / 'training' / 'flow_occ' / f'{n:06d}_10.png'), rgb
    )
  source = F.KittiSource(str(tmp_path))
  assert len(source) == 2
  r = source[1]
  np.testing.assert_array_equal(r['frame1'], frames[1, 10])
  np.testing.assert_array_equal(r['frame2'], frames[1, 11])
  assert r['flow'][1, 1].tolist() == [2.0, -0.5]
  assert not r['valid'][0, 0] and r['valid'].sum() == 34


def test_flying_chairs_source_and_split(tmp_path):
  rng = np.random.default_rng(6)
  os.makedirs(tmp_path / 'data')
  flows = []
  for n in range(1, 4):
    for k in (1, 2):
      Image.fromarray(_image(rng, 3, 4)).save(
        tmp_path / 'data' / f'{n:05d}_img{k}.ppm'
      )
    flows.append(rng.normal(size=(3, 4, 2)).astype(np.float32))
    _write_flo_bytes(tmp_path / 'data' / f'{n:05d}_flow.flo', flows[-1])
  (tmp_path / 'FlyingChairs_train_val.txt').write_text('1\n2\n1\n')
  assert len(F.FlyingChairsSource(str(tmp_path))) == 3
  train = F.FlyingChairsSource(str(tmp_path), split='train')
  val = F.FlyingChairsSource(str(tmp_path), split='val')
  assert (len(train), len(val)) == (2, 1)
  np.testing.assert_array_equal(train[1]['flow'], flows[2])
  np.testing.assert_array_equal(val[0]['flow'], flows[1])
  with Image.open(tmp_path / 'data' / '00002_img1.ppm') as im:
    np.testing.assert_array_equal(val[0]['frame1'], np.asarray(im))


def test_autoflow_source_orders_tables_numerically(tmp_path):
  rng = np.random.default_rng(7)
  names = [
    ('static_40k_png_1_of_4', 'table_0_batch_2'),
    ('static_40k_png_1_of_4', 'table_0_batch_10'),
    ('static_40k_png_2_of_4', 'table_1_batch_0'),
  ]
  flows = {}
  for part, name in names:
    d = tmp_path / part / name
    os.makedirs(d)
    for f in ('im0.png', 'im1.png'):
      Image.fromarray(_image(rng, 4, 4)).save(d / f)
    flows[name] = rng.normal(size=(4, 4, 2)).astype(np.float32)
    _write_flo_bytes(d / 'forward.flo', flows[name])
  source = F.AutoFlowSource(str(tmp_path))
  assert [
    os.path.basename(os.path.dirname(source.paths(i)[0])) for i in range(3)
  ] == [
    'table_0_batch_2',
    'table_0_batch_10',
    'table_1_batch_0',
  ]
  np.testing.assert_array_equal(source[1]['flow'], flows['table_0_batch_10'])


@pytest.mark.parametrize(
  'make',
  [
    lambda p: F.SintelSource(p, arg_name='data.sintel_dir'),
    lambda p: F.KittiSource(p, arg_name='data.sintel_dir'),
    lambda p: F.FlyingChairsSource(p, arg_name='data.sintel_dir'),
    lambda p: F.AutoFlowSource(p, arg_name='data.sintel_dir'),
  ],
)
def test_sources_name_the_field_and_path(tmp_path, make):
  missing = str(tmp_path / 'nope')
  with pytest.raises(ValueError, match='data.sintel_dir.*nope'):
    make(missing)
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(ValueError, match='data.sintel_dir'):
    make(str(tmp_path / 'empty'))


def test_corrupt_record_names_file_and_index(tmp_path):
  os.makedirs(tmp_path / 'data')
  for k in (1, 2):
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(
      tmp_path / 'data' / f'00001_img{k}.ppm'
    )
  (tmp_path / 'data' / '00001_flow.flo').write_bytes(b'\x00' * 20)
  with pytest.raises(ValueError, match=r'FlyingChairsSource\[0\].*00001_flow'):
    F.FlyingChairsSource(str(tmp_path))[0]


def test_size_mismatch_is_an_error(tmp_path):
  os.makedirs(tmp_path / 'data')
  for k in (1, 2):
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(
      tmp_path / 'data' / f'00001_img{k}.ppm'
    )
  _write_flo_bytes(tmp_path / 'data' / '00001_flow.flo', np.zeros((3, 2, 2)))
  with pytest.raises(ValueError, match='flow: expected shape'):
    F.FlyingChairsSource(str(tmp_path))[0]


def test_concat_source():
  a = [{'x': np.array(i)} for i in range(2)]
  b = [{'x': np.array(10 + i)} for i in range(3)]
  s = F.ConcatSource([a, b])
  assert len(s) == 5
  assert [int(s[i]['x']) for i in range(5)] == [0, 1, 10, 11, 12]
  with pytest.raises(IndexError):
    s[5]


# ---------------------------------------------------------------------------
# The motorcycle stereo pair and reversed pairs.
# ---------------------------------------------------------------------------


def _warp_error(record, flow):
  """Mean |frame2(x + flow) - frame1(x)| over valid pixels that stay in the
  image (bilinear)."""
  h, w = flow.shape[:2]
  ys, xs = np.mgrid[:h, :w].astype(np.float64)
  x2, y2 = xs + flow[..., 0], ys + flow[..., 1]
  ok = record['valid'] & (x2 >= 0) & (x2 <= w - 1) & (y2 >= 0) & (y2 <= h - 1)
  warped = np.stack(
    [
      ndimage.map_coordinates(
        record['frame2'][..., c].astype(np.float64), [y2, x2], order=1
      )
      for c in range(3)
    ],
    -1,
  )
  return np.abs(warped - record['frame1'])[ok].mean()


def test_stereo_to_flow_sign_and_unknowns():
  flow, valid = F.stereo_to_flow(np.array([[2.0, np.inf], [np.nan, 0.5]]))
  np.testing.assert_array_equal(valid, [[True, False], [False, True]])
  np.testing.assert_array_equal(flow[..., 0], [[-2.0, 0.0], [0.0, -0.5]])
  assert (flow[..., 1] == 0).all()


def test_motorcycle_flow_sign_by_warping():
  r = F.load_motorcycle()
  assert r['frame1'].shape == (250, 370, 3) and r['flow'].shape == (250, 370, 2)
  assert 0.8 < r['valid'].mean() < 0.9
  u = r['flow'][..., 0][r['valid']]
  assert (u < 0).all() and 2 < -u.max() and -u.min() < 31
  right = _warp_error(r, r['flow'])
  wrong = _warp_error(r, -r['flow'])
  zero = _warp_error(r, np.zeros_like(r['flow']))
  # u = -disparity explains the pair; the opposite sign is worse than none.
  assert right < 0.3 * zero < 0.3 * wrong


def test_downscale_averages_blocks_and_their_valid_flow():
  # 5 x 6 frames, factor 2: the last row is dropped; 2 x 3 blocks.
  frame = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
  flow = np.zeros((5, 6, 2), np.float32)
  flow[..., 0] = np.arange(30).reshape(5, 6)
  flow[..., 1] = -4.0
  valid = np.ones((5, 6), bool)
  valid[0, 0] = False  # block (0, 0) is invalid; its other vectors not
  flow[0, 0] = 1000.0  # unknown ground truth must not leak
  out = F.downscale(
    {'frame1': frame, 'frame2': 255 - frame, 'flow': flow, 'valid': valid}, 2
  )
  assert out['frame1'].shape == (2, 3, 3) and out['frame1'].dtype == np.uint8
  # Block (1, 2): rows 2-3, columns 4-5.
  block = frame[2:4, 4:6].astype(np.float64).mean((0, 1))
  np.testing.assert_array_equal(out['frame1'][1, 2], np.rint(block))
  np.testing.assert_array_equal(out['frame2'][1, 2], np.rint(255 - block))
  np.testing.assert_array_equal(
    out['valid'], [[False, True, True], [True, True, True]]
  )
  # Mean u of rows 2-3, columns 4-5: (16 + 17 + 22 + 23) / 4 = 19.5, halved.
  np.testing.assert_allclose(out['flow'][1, 2], [19.5 / 2, -2.0])
  assert (out['flow'][0, 0] == 0).all()
  assert F.downscale(out, 1) is out
  for bad in (0, 2.0, True):
    with pytest.raises(ValueError, match='factor: expected a positive'):
      F.downscale(out, bad)
  with pytest.raises(ValueError, match='at most the frame size 2 x 3'):
    F.downscale(out, 3)


def test_motorcycle_at_a_quarter_still_warps_to_its_left_view():
  r = F.downscale(F.load_motorcycle(), 4)
  assert r['frame1'].shape == (62, 92, 3)
  u = r['flow'][..., 0][r['valid']]
  assert (u < 0).all() and -u.max() < 1.5 and 7 < -u.min() < 8
  assert _warp_error(r, r['flow']) < 0.5 * _warp_error(
    r, np.zeros_like(r['flow'])
  )


def test_reverse_pair_inverts_a_translation():
  rng = np.random.default_rng(8)
  record = {
    'frame1': _image(rng, 6, 8),
    'frame2': _image(rng, 6, 8),
    'flow': np.broadcast_to(np.float32([2, -1]), (6, 8, 2)).copy(),
    'valid': np.ones((6, 8), bool),
  }
  back = F.reverse_pair(record)
  np.testing.assert_array_equal(back['frame1'], record['frame2'])
  expected_valid = np.zeros((6, 8), bool)
  expected_valid[:5, 2:] = True  # the targets y - 1 >= 0 ... of x + 2 < 8
  np.testing.assert_array_equal(back['valid'], expected_valid)
  assert (back['flow'][expected_valid] == [-2, 1]).all()
  assert (back['flow'][~expected_valid] == 0).all()


def test_reverse_pair_drops_colliding_vectors():
  flow = np.zeros((1, 3, 2), np.float32)
  flow[0, 0, 0] = 1.0  # pixel 0 lands on pixel 1, where pixel 1 (u=0) stays
  record = {
    'frame1': np.zeros((1, 3, 3), np.uint8),
    'frame2': np.zeros((1, 3, 3), np.uint8),
    'flow': flow,
    'valid': np.ones((1, 3), bool),
  }
  back = F.reverse_pair(record)
  np.testing.assert_array_equal(back['valid'], [[False, False, True]])


def test_reversed_pairs_source():
  rng = np.random.default_rng(9)
  base = [
    {
      'frame1': _image(rng, 2, 2),
      'frame2': _image(rng, 2, 2),
      'flow': np.zeros((2, 2, 2), np.float32),
      'valid': np.ones((2, 2), bool),
    }
  ]
  s = F.ReversedPairs(base)
  assert len(s) == 2
  np.testing.assert_array_equal(s[0]['frame1'], base[0]['frame1'])
  np.testing.assert_array_equal(s[1]['frame1'], base[0]['frame2'])
