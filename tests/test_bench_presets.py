"""Smoke test of benchmarks/presets.py: a tiny custom size, one repeat.

Checks that results.json and results.md are written with the expected
fields, JAX beside transformers. It asserts nothing about speed: numbers come
from `python -m benchmarks.presets`, never from tests.
"""

import json
import shutil

import pytest

from benchmarks import presets
from perceiver import presets as model_presets
from tests.test_bench_common import REPORT_KEYS
from tests.test_bench_common import run_report

TINY = model_presets.tiny('imagenet_fourier', image_size=8, num_classes=10)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  out = tmp_path_factory.mktemp('bench')
  res = run_report(
    'benchmarks.presets',
    out,
    '--presets=imagenet_fourier',
    f'--overrides={json.dumps(TINY)}',
    '--dtypes=float32',
    '--modes=forward,train',
    '--repeats=1',
    '--warmup=0',
    '--torch',
    '--matmul_size=64',
    '--timeout=300',
    timeout=1200,
  )
  return out, res


def test_json_fields(results):
  _, res = results
  assert REPORT_KEYS | {'presets'} <= set(res)
  assert res['command'].startswith('python -m benchmarks.presets --out=')
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


def test_markdown(results):
  out, res = results
  md = (out / 'results.md').read_text()
  for needle in (
    '| preset | dtype | mode |',
    'imagenet_fourier',
    'matmul peak',
    res['machine']['cpu'],
    'Load average',
  ):
    assert needle in md


def test_report_only_renders_the_same_markdown(results, tmp_path):
  out, _ = results
  shutil.copy(out / 'results.json', tmp_path / 'results.json')
  presets.main([f'--out={tmp_path}', '--report_only'])
  assert (tmp_path / 'results.md').read_text() == (
    (out / 'results.md').read_text()
  )


@pytest.mark.parametrize(
  'flag, match',
  [
    ('--dtypes=float16', r"--dtypes: expected values among .*'float16'"),
    ('--modes=backward', r"--modes: expected values among .*'backward'"),
    ('--overrides=[1]', r'--overrides: expected a JSON object, got \[1\]'),
  ],
)
def test_bad_flags_are_named(flag, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    presets.main([f'--out={tmp_path}', flag])
