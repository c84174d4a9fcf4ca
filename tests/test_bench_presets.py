"""Smoke test of benchmarks/presets.py: a tiny custom size, one repeat.

Checks that results.json, results.md and the scaling plots are written with
the expected fields. It asserts nothing about speed: numbers come from
`python -m benchmarks.presets`, never from tests.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import presets as benchmark
from perceiver import presets

ROOT = os.path.join(os.path.dirname(__file__), '..')
TINY = presets.tiny('imagenet_fourier', image_size=8, num_classes=10)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  out = tmp_path_factory.mktemp('bench')
  cmd = [
    sys.executable,
    '-m',
    'benchmarks.presets',
    f'--out={out}',
    '--presets=imagenet_fourier',
    f'--overrides={json.dumps(TINY)}',
    '--dtypes=float32',
    '--modes=forward,train',
    '--repeats=1',
    '--warmup=0',
    '--torch',
    '--scaling',
    '--min_log2=5',
    '--max_log2=5',
    '--latents=8',
    '--width=16',
    '--input_channels=4',
    '--decode_chunk=16',
    '--scaling_repeats=1',
    '--matmul_size=64',
    '--timeout=300',
  ]
  env = dict(
    os.environ, MPLBACKEND='Agg', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1'
  )
  proc = subprocess.run(
    cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / 'results.json') as f:
    return out, json.load(f)


def test_json_fields(results):
  _, res = results
  assert {
    'machine',
    'config',
    'command',
    'load_start',
    'load_end',
    'matmul_peak',
    'presets',
    'scaling',
  } <= set(res)
  assert res['machine']['cpu_count'] >= 1
  for fw in ('jax', 'torch'):
    assert set(res['matmul_peak'][fw]) == {'float32', 'bfloat16'}
    assert all(v > 0 for v in res['matmul_peak'][fw].values())
  by_key = {(r['framework'], r['mode']): r for r in res['presets']}
  assert set(by_key) == {
    ('jax', 'forward'),
    ('jax', 'train'),
    ('torch', 'forward'),
    ('torch', 'train'),
  }
  for r in by_key.values():
    assert r['status'] == 'ok', r
    assert r['preset'] == 'imagenet_fourier' and r['dtype'] == 'float32'
    assert len(r['times_s']) == 1 and r['median_s'] > 0
    assert r['peak_rss_bytes'] > 0 and 'peak_mem_bytes' in r
  for mode in ('forward', 'train'):
    jax_rec = by_key[('jax', mode)]
    assert jax_rec['flops'] > 0 and jax_rec['flops_per_s'] > 0
    assert jax_rec['compile_s'] > 0
    assert 'xla_memory' in jax_rec
  # Same weights on both sides: the parameter counts agree.
  assert (
    by_key[('jax', 'forward')]['num_params']
    == (by_key[('torch', 'forward')]['num_params'])
  )
  assert 'max_rel_err' in by_key[('torch', 'forward')]


def test_scaling_fields(results):
  _, res = results
  records = res['scaling']['records']
  curves = {(r['model'], r['sweep']) for r in records}
  assert curves == {
    ('perceiver', 'M'),
    ('perceiver', 'O'),
    ('transformer', 'M'),
    ('perceiver', 'M=O'),
  }
  for r in records:
    assert r['status'] == 'ok', r
    assert r['median_s'] > 0 and r['input_bytes'] > 0
  assert records[-1]['M'] == records[-1]['O'] == 2**5
  slopes = res['scaling']['slopes']
  assert set(slopes) == {'perceiver vs M', 'perceiver vs O', 'transformer vs M'}
  for s in slopes.values():  # One size per curve: nothing to fit.
    assert s['points'] == 1 and s['time_slope'] is None


def test_markdown_and_plots(results):
  out, res = results
  md = (out / 'results.md').read_text()
  for needle in (
    '| preset | dtype | mode |',
    '## Scaling',
    'imagenet_fourier',
    'matmul peak',
    res['machine']['cpu'],
    'Load average',
  ):
    assert needle in md
  for name in ('scaling_time.png', 'scaling_memory.png'):
    with open(out / name, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_fit_slope():
  xs = 2.0 ** np.arange(10, 15)
  assert benchmark.fit_slope(xs, 3 * xs**2) == pytest.approx(2.0)
  assert benchmark.fit_slope(xs, 5 * xs) == pytest.approx(1.0)
  assert benchmark.fit_slope(xs[:1], xs[:1]) is None


def test_scaling_slopes():
  """Slopes per curve from records; failed points are left out."""
  sizes = [2**k for k in range(10, 16)]
  records = []
  for n in sizes:
    records.append(
      dict(
        model='perceiver',
        sweep='M',
        M=n,
        O=1024,
        status='ok',
        median_s=1e-6 * n,
        peak_mem_bytes=1e3 * n + 1e9,
        input_bytes=1e3 * n,
        model_mem_bytes=1e8 + 0 * n,
      )
    )
    records.append(
      dict(
        model='transformer',
        sweep='M',
        M=n,
        O=n,
        status='ok' if n < 2**14 else 'OOM',
        median_s=1e-9 * n**2,
        peak_mem_bytes=4.0 * n**2,
      )
    )
  records.append(
    dict(
      model='perceiver',
      sweep='M=O',
      M=2**15,
      O=2**15,
      status='ok',
      median_s=1.0,
      peak_mem_bytes=1.0,
    )
  )
  slopes = benchmark.scaling_slopes(records)
  assert set(slopes) == {'perceiver vs M', 'transformer vs M'}
  perceiver = slopes['perceiver vs M']
  assert perceiver['points'] == 6
  assert perceiver['time_slope'] == pytest.approx(1.0)
  assert perceiver['memory_slope'] < 0.1  # The constant dominates.
  assert perceiver['model_memory_slope_upper_half'] == (
    pytest.approx(0.0, abs=1e-6)
  )
  transformer = slopes['transformer vs M']
  assert transformer['points'] == 4
  assert transformer['time_slope'] == pytest.approx(2.0)
  assert transformer['memory_slope_upper_half'] == pytest.approx(2.0)


def test_reset_peak_rss_measures_a_later_peak():
  # After a reset the high-water mark follows the current RSS, so a 200 MB
  # buffer allocated and freed before the reset is not counted after it.
  if not benchmark.reset_peak_rss():
    pytest.skip('no /proc/self/clear_refs')
  big = np.ones(50_000_000, np.float32)  # 200 MB, touched
  del big
  assert benchmark.reset_peak_rss()
  start = benchmark.proc_status_bytes('VmRSS')
  assert benchmark.proc_status_bytes('VmHWM') - start < 100e6
  small = np.ones(25_000_000, np.float32)  # 100 MB
  assert benchmark.proc_status_bytes('VmHWM') - start > 90e6
  del small


def test_streamed_encode_mode(tmp_path):
  """--streamed_encode at tiny M: the points file, records and the slope."""
  data = tmp_path / 'data'
  cmd = [
    sys.executable,
    '-m',
    'benchmarks.presets',
    f'--out={tmp_path}',
    '--streamed_encode',
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
  proc = subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'streamed_encode.json') as f:
    res = json.load(f)
  assert os.path.getsize(data / benchmark.STREAM_FILE) == 3 * 2**10
  assert [r['M'] for r in res['records']] == [2**9, 2**10]
  for r in res['records']:
    assert r['status'] == 'ok', r
    assert r['median_s'] > 0 and r['points_per_s'] > 0
    assert r['peak_rss_bytes'] > 0 and r['latents_finite']
    assert r['input_bytes'] == 3 * r['M']
  assert isinstance(res['time_slope'], float)
  assert res['config']['grid_side'] == 16  # 16^3 >= 2^10 points
  md = (tmp_path / 'streamed_encode.md').read_text()
  assert '| 2^10 |' in md and 'Fitted slope' in md


def test_points_file_is_reused_and_extended(tmp_path):
  path = str(tmp_path / 'points.bin')
  first = benchmark.ensure_points_file(path, 100)
  assert first['written_bytes'] == 300 == os.path.getsize(path)
  assert benchmark.ensure_points_file(path, 50)['written_bytes'] == 0
  before = np.fromfile(path, np.uint8)
  benchmark.ensure_points_file(path, 200)
  after = np.fromfile(path, np.uint8)
  assert after.size == 600
  np.testing.assert_array_equal(after[:300], before)
