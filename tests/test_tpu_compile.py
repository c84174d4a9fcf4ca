"""benchmarks.tpu_compile: the smallest TPU slice where a config fits."""

import json

import pytest

from benchmarks import tpu_compile
from perceiver.train import aot
from tests.test_aot import needs_libtpu


def test_shapes_by_size_orders_by_chip_count():
  shapes = tpu_compile.shapes_by_size('v5e')
  assert shapes[0] == 'v5e:1x1' and set(shapes) == {
    t for t in aot.known_topologies() if t.startswith('v5e:')
  }
  counts = [tpu_compile._chips(t) for t in shapes]
  assert counts == sorted(counts)


def test_table_rows_by_hand():
  fit = dict(
    topology='v5e:2x2',
    devices=4,
    batch_size=1024,
    memory=3 * 2**30,
    hbm=16 * 2**30,
    step_flops=2.5e12,
    roofline_s=0.0125,
    examples_per_s=81920.0,
    compile_s=42.0,
    fits=True,
  )
  text = tpu_compile.table(
    [
      ('mlm', 'v5e', fit, [fit]),
      ('flow', 'v4', None, [dict(topology='v4:2x2x2')]),
    ]
  )
  rows = text.splitlines()
  assert rows[2] == (
    '| mlm | 1024 | v5e | v5e:2x2 (4 devices) | 3.0 / 16.0 | 2.50 | 12.5 '
    '| 81920 | 42 |'
  )
  assert rows[3] == '| flow | | v4 | none up to v4:2x2x2 | | | | | |'


def test_bad_arguments_name_the_flag():
  with pytest.raises(ValueError, match='--only: expected names among'):
    tpu_compile.load_config('resnet', {})
  with pytest.raises(ValueError, match="--set: 'data.nope' is not a field"):
    tpu_compile.load_config('flow', {'data.nope': 1})
  with pytest.raises(ValueError, match='--chips: expected chips among'):
    tpu_compile.main(['--chips=v9', '--only=flow'])
  with pytest.raises(ValueError, match='--set: expected KEY=VALUE'):
    tpu_compile.main(['--set=fsdp', '--only=flow'])


@needs_libtpu
def test_smallest_fit_compiles_and_caches(tmp_path, monkeypatch):
  # digits :debug (batch 64) on v5e: the smallest shape that libtpu lays
  # out divides the batch and fits, so it is the answer; a second run reads
  # the cache and compiles nothing.
  monkeypatch.setitem(tpu_compile.CONFIGS, 'digits_debug', ('digits', 'debug'))
  cache, out = tmp_path / 'cache.json', tmp_path / 'table.md'
  args = [
    '--only=digits_debug',
    '--chips=v5e',
    '--no-table_8',
    f'--cache={cache}',
    f'--out={out}',
  ]
  tpu_compile.main(args)
  entries = json.loads(cache.read_text())
  assert len(entries) == 1
  (summary,) = entries.values()
  assert summary['topology'] in ('v5e:1x1', 'v5e:2x2') and summary['fits']
  assert summary['memory'] <= summary['hbm'] and summary['step_flops'] > 0
  n = summary['devices']
  row = f'| digits_debug | 64 | v5e | {summary["topology"]} ({n} devices) |'
  assert row in out.read_text()
  calls = []
  monkeypatch.setattr(aot, 'compile_report', lambda *a, **k: calls.append(1))
  tpu_compile.main(args)
  assert not calls


def test_predicted_oom_scales_a_cached_failure_by_hand():
  # 143.91G of temporaries on 4 v5p devices (95.73G available): ~71.96G on
  # 8 v5p devices, may fit; on 16 v5e devices ~35.98G against 1.5 x 95.73
  # x 16e9 / (95 * 2**30) = 1.5 x 15.02G = 22.5G: skipped; on 32 v5e
  # devices ~17.99G, within the margin: compiled.
  error = (
    'RESOURCE_EXHAUSTED: ... the total memory required for HLO temporaries '
    '(143.91G) exceeds available HBM (95.73G). HLO module: jit_step.'
  )
  key = json.dumps(['imagenet_conv', {}, 'v5p:2x2x1'], sort_keys=True)
  cache = {key: dict(devices=4, fits=False, error=error)}
  predict = tpu_compile.predicted_oom
  assert predict('imagenet_conv', {}, 'v5p:2x2x2', cache) is None
  reason = predict('imagenet_conv', {}, 'v5e:4x4', cache)
  assert reason == (
    'needs ~36.0G of temporaries per device (from 143.91G on v5p:2x2x1), '
    'over 1.5 x 15.0G available'
  )
  assert predict('imagenet_conv', {}, 'v5e:4x8', cache) is None
  # XLA writes larger sizes in T: 1.41T on 4 devices is ~176.25G on 32.
  key = json.dumps(['flow', {}, 'v5p:2x2x1'], sort_keys=True)
  cache[key] = dict(devices=4, error=error.replace('143.91G', '1.41T'))
  assert predict('flow', {}, 'v5e:4x8', cache) == (
    'needs ~176.2G of temporaries per device (from 1.41T on v5p:2x2x1), '
    'over 1.5 x 15.0G available'
  )
  # Another configuration or other overrides: no evidence.
  assert predict('imagenet_fourier', {}, 'v5e:4x4', cache) is None
  assert predict('imagenet_conv', {'fsdp': True}, 'v5e:4x4', cache) is None


def test_table_8_alone_from_the_cache(tmp_path):
  # `--chips=` (none): no column search, only Table 8, read from a cache
  # the test writes (bfloat16 keys); nothing compiles. Fourier: a bound of
  # 1 / 0.25 s = 4.00 steps/s against the paper's 4.85 = 121%, its parts
  # 100 and 250 ms; conv: 1 / 0.5 s = 2.00 against 5.58 = 279%.
  overrides = {'precision': 'bfloat16'}
  parts = {'imagenet_fourier': (0.1, 0.25), 'imagenet_conv': (0.5, 0.2)}
  cache = {
    json.dumps(
      [name, overrides, tpu_compile.TABLE_8_TOPOLOGY], sort_keys=True
    ): dict(
      topology=tpu_compile.TABLE_8_TOPOLOGY,
      roofline_s=max(c, m),
      compute_s=c,
      memory_s=m,
      memory=2**30,
      hbm=16 * 2**30,
      step_flops=1e12,
      examples_per_s=1024 / max(c, m),
      compile_s=90.0,
    )
    for name, (c, m) in parts.items()
  }
  cache_file, out = tmp_path / 'cache.json', tmp_path / 'table.md'
  cache_file.write_text(json.dumps(cache))
  tpu_compile.main(
    [
      '--chips=',
      '--only=imagenet_fourier,imagenet_conv',
      '--set=precision=bfloat16',
      f'--cache={cache_file}',
      f'--out={out}',
    ]
  )
  rows = out.read_text().splitlines()
  assert rows[0].startswith('| configuration | paper steps/s (Table 8')
  assert rows[2:] == [
    '| imagenet_fourier | 4.85 | 4.00 | 121% | 100 / 250 |',
    '| imagenet_conv | 5.58 | 2.00 | 279% | 500 / 200 |',
  ]
