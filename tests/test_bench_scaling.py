"""Smoke test of benchmarks/scaling.py at one tiny size, and its slopes.

It asserts nothing about speed: numbers come from `python -m
benchmarks.scaling`, never from tests.
"""

import shutil

import pytest

from benchmarks import scaling
from tests.test_bench_common import REPORT_KEYS
from tests.test_bench_common import run_report


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('scaling')
  res = run_report(
    'benchmarks.scaling',
    out,
    '--min_log2=5',
    '--max_log2=5',
    '--latents=8',
    '--width=16',
    '--input_channels=4',
    '--decode_chunk=16',
    '--scaling_repeats=1',
    '--matmul_size=64',
    '--timeout=300',
    timeout=1200,
  )
  return out, res


def test_scaling_fields(results):
  _, res = results
  assert REPORT_KEYS | {'scaling'} <= set(res)
  assert set(res['matmul_peak']['jax']) == {'float32', 'bfloat16'}
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
    '## Scaling',
    'matmul peak',
    res['machine']['cpu'],
    'Load average',
  ):
    assert needle in md
  for name in ('scaling_time.png', 'scaling_memory.png'):
    with open(out / name, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_report_only_renders_the_same_report(results, tmp_path):
  out, _ = results
  shutil.copy(out / 'results.json', tmp_path / 'results.json')
  scaling.main([f'--out={tmp_path}', '--report_only'])
  assert (tmp_path / 'results.md').read_text() == (
    (out / 'results.md').read_text()
  )
  assert (tmp_path / 'scaling_time.png').exists()


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
  slopes = scaling.scaling_slopes(records)
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


def test_specs_cover_both_sweeps_the_transformer_and_m_equals_o():
  config = dict(
    min_log2=4,
    max_log2=9,
    log2_step=2,
    transformer_log2_step=3,
    latents=8,
    width=16,
    input_channels=4,
    decode_chunk=16,
    scaling_repeats=1,
  )
  specs = scaling.scaling_specs(config, mem_budget=1.0)
  by_curve = {}
  for s in specs:
    by_curve.setdefault((s['model'], s['sweep']), []).append((s['M'], s['O']))
  # 2^4, 2^6, 2^8 and the largest, 2^9, even off the step.
  assert by_curve[('perceiver', 'M')] == [(m, 16) for m in (16, 64, 256, 512)]
  assert by_curve[('perceiver', 'O')] == [(16, o) for o in (16, 64, 256, 512)]
  assert by_curve[('transformer', 'M')] == [(16, 16), (128, 128)]
  assert by_curve[('perceiver', 'M=O')] == [(512, 512)]


@pytest.mark.parametrize(
  'flags, match',
  [
    (['--min_log2=6', '--max_log2=5'], 'expected min <= max, got 6 and 5'),
    (['--log2_step=0'], '--log2_step: expected at least 1, got 0'),
  ],
)
def test_bad_sizes_are_named(flags, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    scaling.main([f'--out={tmp_path}', *flags])
