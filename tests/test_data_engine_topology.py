"""Digits with augmentation trains the same on any topology.

Reference: `experiments.main --config=experiments/digits.py:debug` (random
shifts of up to 2 pixels on) as 1 process x 4 CPU devices with no loader
workers. Under test, one axis at a time: 1 device, 1 loader worker. The
losses of every step must agree to 1e-5; without augmentation they differ
(the augmentation really is in the comparison). 2 processes x 2 devices
(`jax.distributed` on 127.0.0.1) with 1 worker, and 1 process x 2 devices
with 2 workers, are compared with 1 process x 4 devices by
`test_data_engine_resume.test_digits_run_continues_on_another_topology`
(the two halves of its elastic run).
"""

import pytest

import numpy as np

from tests import test_train_common as common

ARGS = [
  '--config=experiments/digits.py:debug',
  '--config.total_steps=5',
  '--config.batch_size=16',
  '--config.log_every=1',
  '--config.progress_bar=False',
  '--config.tensorboard=False',
  '--config.plot_curves=False',
]


def _losses(workdir, extra=(), num_processes=1, devices=4):
  runs = common.launch_main(
    ARGS + [f'--workdir={workdir}', *extra],
    num_processes=num_processes,
    devices=devices,
  )
  for code, out in runs:
    assert code == 0, out[-3000:]
  losses = common.train_losses(workdir)
  assert sorted(losses) == [1, 2, 3, 4, 5]
  return np.array([losses[s] for s in sorted(losses)])


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  return _losses(str(tmp_path_factory.mktemp('reference')))


@pytest.mark.parametrize(
  'axis,extra,num_processes,devices',
  [
    ('1 device', (), 1, 1),
    ('1 worker', ('--config.data.worker_count=1',), 1, 4),
  ],
)
def test_losses_do_not_depend_on_the_topology(
  reference, tmp_path, axis, extra, num_processes, devices
):
  got = _losses(str(tmp_path), extra, num_processes, devices)
  np.testing.assert_allclose(got, reference, rtol=1e-5, err_msg=axis)


def test_augmentation_changes_the_losses(reference, tmp_path):
  got = _losses(str(tmp_path), ['--config.data.max_shift=0'])
  assert np.abs(got - reference).max() > 1e-3
