"""Data parallelism and FSDP on 8 fake CPU devices give single-device results.

The reference is the same global batch on one device. A worker subprocess
(this file run as a script, with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`) trains the toy model on
1, 2, 4 and 8 devices, with FSDP, with gradient accumulation and with
BatchNorm, and saves the losses and parameters for the test to compare.
"""

import fcntl
import json
import os
import sys
import tempfile

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name -> (num_devices, config overrides)
CASES = {
  'dev1': (1, {}),
  'dev2': (2, {}),
  'dev4': (4, {}),
  'dev8': (8, {}),
  'wide_dev1': (1, {'model.width': 512}),
  'wide_fsdp4': (8, {'model.width': 512, 'fsdp': 4}),
  # Microbatches draw their own dropout masks, so compare without dropout.
  'accum1_dev8': (8, {'batch_size': 32, 'model.dropout': 0.0}),
  'accum2_dev8': (
    8,
    {'batch_size': 32, 'accumulation_steps': 2, 'model.dropout': 0.0},
  ),
  'bn_dev1': (1, {'model.batchnorm': True}),
  'bn_dev8': (8, {'model.batchnorm': True}),
  # The default job's Perceiver (conv stem with BatchNorm), debug-sized.
  'digits_dev1': (1, {'digits': True}),
  'digits_dev8': (8, {'digits': True}),
}
# Dropout is on everywhere: its randomness must not depend on the devices.
COMMON = {'total_steps': 5, 'checkpoint_every': 100}


def _worker(out_dir):
  import jax  # pylint: disable=g-import-not-at-top
  from tests import test_train_common as common  # pylint: disable=g-import-not-at-top
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 8, jax.devices()
  summary = {}
  for name, (n, overrides) in CASES.items():
    if overrides.get('digits'):
      from experiments import digits  # pylint: disable=g-import-not-at-top

      config = digits.get_config('debug')
      config.unlock()
      config.update(
        COMMON,
        tensorboard=False,
        plot_curves=False,
        progress_bar=False,
        eval_batch_size=2000,
      )
      build_task = digits.build_task
    else:
      config = common.toy_config(
        **{'model.dropout': 0.25, **COMMON, **overrides}
      )
      build_task = common.build_toy_task
    result = loop.train(
      config,
      build_task,
      tempfile.mkdtemp(dir=out_dir),
      devices=jax.devices()[:n],
    )
    ts = result['train_state']
    flat = {
      '/'.join(map(str, (k.key for k in path))): np.asarray(v)
      for path, v in jax.tree_util.tree_flatten_with_path(
        {'params': ts.params, 'state': ts.state}
      )[0]
    }
    np.savez(os.path.join(out_dir, name + '.npz'), **flat)
    specs = sorted({str(v.sharding.spec) for v in jax.tree.leaves(ts.params)})
    summary[name] = {
      'losses': [result['losses'][s] for s in sorted(result['losses'])],
      'param_specs': specs,
    }
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f)


def _run_worker(out):
  from tests import test_train_common as common  # pylint: disable=g-import-not-at-top

  proc = common.run_python(['-m', 'tests.test_train_devices', out], devices=8)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  # Under pytest-xdist every worker would build this module fixture; the
  # first one runs the subprocess and the others wait for its results in
  # the session's shared temporary directory.
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent
  out = str(base / 'train_devices_runs')
  with open(str(base / 'train_devices.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not os.path.exists(os.path.join(out, 'summary.json')):
        os.makedirs(out, exist_ok=True)
        _run_worker(out)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  arrays = {
    name: dict(np.load(os.path.join(out, name + '.npz'))) for name in CASES
  }
  return summary, arrays


# Key-projection biases add the same logit to every key of a query, so the
# softmax cancels them: their true gradient is 0 and what they receive is
# rounding noise, which Adam scales up to full-size steps. They differ
# between any two summation orders and carry no information; skip them.
_NOISE_ONLY = 'attention/linear_1/b'


def _assert_same(runs, a, b, rtol=2e-5, atol=2e-6):
  summary, arrays = runs
  np.testing.assert_allclose(
    summary[a]['losses'], summary[b]['losses'], rtol=rtol, atol=atol
  )
  assert arrays[a].keys() == arrays[b].keys()
  for k in arrays[a]:
    if k.endswith(_NOISE_ONLY):
      continue
    np.testing.assert_allclose(
      arrays[a][k], arrays[b][k], rtol=rtol, atol=atol, err_msg=k
    )


@pytest.mark.parametrize('name', ['dev2', 'dev4', 'dev8'])
def test_data_parallel_matches_one_device(runs, name):
  _assert_same(runs, 'dev1', name)
  # The run really trained (the comparison is not between constants).
  losses = runs[0]['dev1']['losses']
  assert len(losses) == 5 and losses[-1] < losses[0]


def test_fsdp_matches_one_device_and_shards_parameters(runs):
  _assert_same(runs, 'wide_dev1', 'wide_fsdp4')
  specs = runs[0]['wide_fsdp4']['param_specs']
  assert any('fsdp' in s for s in specs), specs
  assert all('fsdp' not in s for s in runs[0]['wide_dev1']['param_specs'])


def test_gradient_accumulation_matches_full_batch(runs):
  _assert_same(runs, 'accum1_dev8', 'accum2_dev8', rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('case', ['bn', 'digits'])
def test_batchnorm_statistics_span_the_global_batch(runs, case):
  _assert_same(runs, f'{case}_dev1', f'{case}_dev8', rtol=1e-4, atol=1e-5)
  state_keys = [
    k
    for k in runs[1][f'{case}_dev8']
    if 'batchnorm' in k and k.startswith('state/')
  ]
  assert state_keys  # BatchNorm moving averages were trained and compared.


if __name__ == '__main__':
  _worker(sys.argv[1])
