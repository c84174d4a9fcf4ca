"""Smoke test of benchmarks/streamed_encode.py at tiny M, and its file.

It asserts nothing about speed: numbers come from `python -m
benchmarks.streamed_encode`, never from tests.
"""

import json
import os

import numpy as np
import pytest

from benchmarks import streamed_encode
from tests.test_train_common import run_python


def test_streamed_encode(tmp_path):
  """Tiny M: the points file, records and the slope."""
  data = tmp_path / 'data'
  proc = run_python(
    [
      '-m',
      'benchmarks.streamed_encode',
      f'--out={tmp_path}',
      f'--stream_dir={data}',
      '--min_log2_points=9',
      '--max_log2_points=10',
      '--log2_points_step=1',
      '--stream_block=256',
      '--stream_latents=8',
      '--stream_width=16',
      '--stream_bands=2',
      '--timeout=300',
    ]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'streamed_encode.json') as f:
    res = json.load(f)
  assert os.path.getsize(data / streamed_encode.STREAM_FILE) == 3 * 2**10
  assert [r['M'] for r in res['records']] == [2**9, 2**10]
  for r in res['records']:
    assert r['status'] == 'ok', r
    assert r['median_s'] > 0 and r['points_per_s'] > 0
    assert r['peak_rss_bytes'] > 0 and r['latents_finite']
    assert r['input_bytes'] == 3 * r['M']
  assert isinstance(res['time_slope'], float)
  assert res['config']['grid_side'] == 16  # 16^3 >= 2^10 points
  assert res['config']['timeout'] == 300
  md = (tmp_path / 'streamed_encode.md').read_text()
  assert '| 2^10 |' in md and 'Fitted slope' in md


def test_points_file_is_reused_and_extended(tmp_path):
  path = str(tmp_path / 'points.bin')
  first = streamed_encode.ensure_points_file(path, 100)
  assert first['written_bytes'] == 300 == os.path.getsize(path)
  assert streamed_encode.ensure_points_file(path, 50)['written_bytes'] == 0
  before = np.fromfile(path, np.uint8)
  streamed_encode.ensure_points_file(path, 200)
  after = np.fromfile(path, np.uint8)
  assert after.size == 600
  np.testing.assert_array_equal(after[:300], before)


def test_timeout_defaults_to_two_hours():
  args = streamed_encode.parser().parse_args(
    ['--min_log2_points=2', '--max_log2_points=3']
  )
  config = streamed_encode.config_from_args(args)
  assert config['timeout'] == 7200
  assert config['grid_side'] == 2  # 2^3 points on a 2^3 grid


@pytest.mark.parametrize(
  'flags, match',
  [
    (['--min_log2_points=5', '--max_log2_points=4'], 'got 5 and 4'),
    (['--max_log2_points=32'], 'max <= 31, got 20 and 32'),
    (['--log2_points_step=0'], '--log2_points_step: expected at least 1'),
  ],
)
def test_bad_sizes_are_named(flags, match):
  args = streamed_encode.parser().parse_args(flags)
  with pytest.raises(ValueError, match=match):
    streamed_encode.config_from_args(args)
