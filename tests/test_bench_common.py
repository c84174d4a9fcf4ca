"""benchmarks/common.py: slopes, the peak RSS reset, the worker processes,
the command-line helpers; `run_report` for the other benchmark tests."""

import json

import numpy as np
import pytest

from benchmarks import common
from tests.test_train_common import run_python

# What every results.json of benchmarks/presets.py and scaling.py holds.
REPORT_KEYS = {
  'machine',
  'config',
  'command',
  'load_start',
  'load_end',
  'matmul_peak',
}


def run_report(module, out, *flags, timeout=600):
  """`python -m module --out=out FLAGS` (CPU) succeeds: its results.json."""
  proc = run_python(['-m', module, f'--out={out}', *flags], timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / 'results.json') as f:
    return json.load(f)


def test_fit_slope():
  xs = 2.0 ** np.arange(10, 15)
  assert common.fit_slope(xs, 3 * xs**2) == pytest.approx(2.0)
  assert common.fit_slope(xs, 5 * xs) == pytest.approx(1.0)
  assert common.fit_slope(xs[:1], xs[:1]) is None


def test_reset_peak_rss_measures_a_later_peak():
  # After a reset the high-water mark follows the current RSS, so a 200 MB
  # buffer allocated and freed before the reset is not counted after it.
  if not common.reset_peak_rss():
    pytest.skip('no /proc/self/clear_refs')
  big = np.ones(50_000_000, np.float32)  # 200 MB, touched
  del big
  assert common.reset_peak_rss()
  start = common.proc_status_bytes('VmRSS')
  assert common.proc_status_bytes('VmHWM') - start < 100e6
  small = np.ones(25_000_000, np.float32)  # 100 MB
  assert common.proc_status_bytes('VmHWM') - start > 90e6
  del small


def test_spawn_returns_the_worker_record_or_its_failure():
  # benchmarks.streamed_encode's worker: 'streamed_encode' is its only kind.
  module = 'benchmarks.streamed_encode'
  failed = common.spawn(module, dict(kind='nope'), timeout=120)
  assert failed['status'] == 'error'
  assert (
    "--worker: expected a kind among ['streamed_encode']" in (failed['reason'])
  )
  slow = common.spawn(module, dict(kind='nope'), timeout=0.01)
  assert slow == dict(status='timeout', reason='over 0 s')


def test_run_worker_writes_the_handlers_record(tmp_path):
  path = tmp_path / 'result.json'
  spec = dict(kind='double', n=3, result_path=str(path))
  common.run_worker(json.dumps(spec), dict(double=lambda s: {'n': 2 * s['n']}))
  assert json.loads(path.read_text()) == {'n': 6}


def test_flags_keep_the_recorded_spellings():
  parser = common.new_parser('benchmarks.x', 'Doc.\n\nMore.')
  parser.add_argument('--presets', type=common.comma_list, default=['a'])
  common.add_bool(parser, 'torch', default=True, help='')
  assert parser.parse_args([]).torch is True
  assert parser.parse_args(['--notorch']).torch is False
  assert parser.parse_args(['--notorch', '--torch']).torch is True
  assert parser.parse_args(['--presets=']).presets == []
  assert parser.parse_args(['--presets=a, b']).presets == ['a', 'b']
  assert common.command('benchmarks.x', ['--a=1']) == (
    'python -m benchmarks.x --a=1'
  )
