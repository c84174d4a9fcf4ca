"""benchmarks/gpu.py without a GPU: the message, and the script on the CPU
(`--allow_cpu`) at a tiny size."""

import json

import jax
import numpy as np
import pytest

from benchmarks import gpu
from tests.test_bench_presets import TINY


def _has_gpu():
  try:
    return bool(jax.devices('gpu'))
  except RuntimeError:
    return False


def test_without_a_gpu_it_says_so_and_exits_0(capsys, tmp_path):
  if _has_gpu():
    pytest.skip('a GPU is present')
  assert gpu.main([f'--out={tmp_path}']) == 0
  assert capsys.readouterr().out.strip().endswith('no GPU found')
  assert not (tmp_path / 'gpu_results.json').exists()


def test_allow_cpu_times_a_tiny_training_step(tmp_path):
  if _has_gpu():
    pytest.skip('a GPU is present: --allow_cpu changes nothing')
  argv = [
    f'--out={tmp_path}',
    '--allow_cpu',
    '--presets=imagenet_fourier',
    f'--overrides={json.dumps(TINY)}',
    '--batch=2',
    '--repeats=2',
    '--warmup=1',
    '--gpu_matmul_size=64',
  ]
  assert gpu.main(argv) == 0
  with open(tmp_path / 'gpu_results.json') as f:
    res = json.load(f)
  assert res['device'] == 'cpu (debug run)' and res['matmul_peak_bf16'] > 0
  (rec,) = res['results']
  assert rec['status'] == 'ok', rec
  assert rec['attention_impl'] in ('cudnn', 'xla')
  assert len(rec['times_s']) == 2
  assert rec['step_s'] == pytest.approx(np.median(rec['times_s']))
  assert rec['examples_per_s'] == pytest.approx(2 / rec['step_s'])
  assert rec['flops'] > 0 and rec['flops_per_s'] > 0
  assert np.isfinite(rec['loss']) and rec['loss'] > 0
