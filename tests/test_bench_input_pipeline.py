"""benchmarks/input_pipeline.py: the digits loader timed alone."""

import json

import pytest

from benchmarks import input_pipeline


def test_input_pipeline_times_the_digits_loader():
  (record,) = input_pipeline.input_pipeline([0], batches=3, warmup=1)
  assert record['worker_count'] == 0 and record['batches'] == 3
  assert record['examples_per_s'] == pytest.approx(
    3 * record['batch_size'] / record['seconds']
  )


def test_main_writes_input_pipeline_json(tmp_path):
  argv = [
    f'--out={tmp_path}',
    '--input_workers=0',
    '--input_batches=2',
    '--input_warmup=1',
  ]
  input_pipeline.main(argv)
  with open(tmp_path / 'input_pipeline.json') as f:
    res = json.load(f)
  assert set(res) == {
    'command',
    'machine',
    'load_start',
    'input_pipeline',
    'load_end',
  }
  assert res['command'] == 'python -m benchmarks.input_pipeline ' + ' '.join(
    argv
  )
  (record,) = res['input_pipeline']
  assert record['worker_count'] == 0 and record['batches'] == 2
