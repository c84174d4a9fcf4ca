"""Two processes on 127.0.0.1 train exactly like one process.

Reference: one process with 4 (fake CPU) devices. Under test: 2 processes
with 2 devices each, connected by `jax.distributed` (gloo collectives), each
reading only its half of every global batch. Same global batch, same device
count, so the losses and parameters must agree. The 2-process run also writes
and restores a checkpoint cooperatively (it is interrupted and resumed).
"""

import json
import os
import subprocess
import sys

import numpy as np

from tests import test_train_common as common

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OVERRIDES = {'total_steps': 6, 'checkpoint_every': 3, 'model.dropout': 0.2}


def _worker(out_dir, process_id, num_processes, port, interrupt_at):
  from perceiver.train import distributed  # pylint: disable=g-import-not-at-top

  if num_processes > 1:
    distributed.initialize(f'127.0.0.1:{port}', num_processes, process_id)
  import jax  # pylint: disable=g-import-not-at-top
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 4 and jax.process_count() == num_processes
  config = common.toy_config(
    **OVERRIDES, **{'model.interrupt_at_step': interrupt_at}
  )
  try:
    result = loop.train(
      config, common.build_toy_task, os.path.join(out_dir, 'workdir')
    )
  except common.Interrupted:
    return
  ts = result['train_state']
  if jax.process_index() == 0:
    params = {
      f'{m}/{n}': np.asarray(v)
      for m, p in ts.params.items()
      for n, v in p.items()
    }
    np.savez(os.path.join(out_dir, 'params.npz'), **params)
    with open(os.path.join(out_dir, 'losses.json'), 'w') as f:
      json.dump(
        {
          'start_step': result['start_step'],
          'losses': {str(k): v for k, v in result['losses'].items()},
        },
        f,
      )


def _launch(out_dir, num_processes, interrupt_at=-1):
  devices = 4 // num_processes
  env = common.cpu_env(devices)
  port = common.free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'tests.test_train_multihost',
        out_dir,
        str(i),
        str(num_processes),
        str(port),
        str(interrupt_at),
      ],
      env=env,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(num_processes)
  ]
  outputs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]


def _read(out_dir):
  with open(os.path.join(out_dir, 'losses.json')) as f:
    record = json.load(f)
  return record, dict(np.load(os.path.join(out_dir, 'params.npz')))


def test_two_processes_match_one_process(tmp_path):
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  _launch(one, 1)
  # The 2-process job is interrupted after its checkpoint at step 3 and
  # restarted: the cooperative save and restore are exercised too.
  _launch(two, 2, interrupt_at=4)
  _launch(two, 2)
  ref, ref_params = _read(one)
  got, got_params = _read(two)
  assert ref['start_step'] == 0 and got['start_step'] == 3
  steps = ['4', '5', '6']
  np.testing.assert_allclose(
    [got['losses'][s] for s in steps],
    [ref['losses'][s] for s in steps],
    rtol=1e-5,
    atol=1e-6,
  )
  assert ref_params.keys() == got_params.keys()
  for k in ref_params:
    np.testing.assert_allclose(
      got_params[k], ref_params[k], rtol=1e-5, atol=1e-6, err_msg=k
    )


if __name__ == '__main__':
  _worker(
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    int(sys.argv[4]),
    int(sys.argv[5]),
  )
