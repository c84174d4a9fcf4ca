"""Unit checks of the step, the metrics file and the bar.

References: the float32 step for the bfloat16 policy, hand-computed progress
figures. (The data iterator is tested in test_data_engine.py.)
"""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import test_train_common as common
from perceiver.train import metrics as metrics_lib
from perceiver.train import optim
from perceiver.train import progress as progress_lib
from perceiver.train import step as step_lib


def _task_optimizer_state(config):
  task = common.build_toy_task(config, 0, 1)
  opt = optim.make_optimizer(
    config.optimizer,
    optim.make_schedule(
      config.optimizer, config.batch_size, config.total_steps
    ),
  )
  return (
    task,
    opt,
    step_lib.init_train_state(task.forward, opt, 0, task.example_batch),
  )


def _step_and_state(precision):
  task, opt, ts = _task_optimizer_state(common.toy_config())
  step = step_lib.make_train_step(
    task.forward, task.per_example, opt, precision=precision
  )
  return step, ts, next(task.train_data)


def test_bfloat16_policy_computes_in_bf16_and_keeps_float32_params():
  step32, ts, batch = _step_and_state('float32')
  step16, _, _ = _step_and_state('bfloat16')
  jaxpr16 = str(jax.make_jaxpr(step16)(ts, batch))
  jaxpr32 = str(jax.make_jaxpr(step32)(ts, batch))
  assert 'bf16' in jaxpr16 and 'bf16' not in jaxpr32
  new16, m16 = jax.jit(step16)(ts, batch)
  _, m32 = jax.jit(step32)(ts, batch)
  assert m16['loss'].dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new16.params))
  np.testing.assert_allclose(m16['loss'], m32['loss'], rtol=2e-2)
  assert float(m16['loss']) != float(m32['loss'])  # Really lower precision.


def test_step_randomness_depends_on_the_step_only():
  task, opt, ts = _task_optimizer_state(
    common.toy_config(**{'model.dropout': 0.5})
  )
  step = jax.jit(step_lib.make_train_step(task.forward, task.per_example, opt))
  batch = next(task.train_data)
  loss = lambda s: float(step(ts._replace(step=jnp.int32(s)), batch)[1]['loss'])
  assert loss(3) == loss(3)
  assert loss(3) != loss(4)


def test_metrics_file_drops_records_past_the_restored_step(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
  for s in (1, 2, 3, 4):
    writer.write(s, {'loss': float(s)})
  writer.close()
  resumed = metrics_lib.MetricWriter(
    str(tmp_path), resume_step=2, tensorboard=False
  )
  resumed.write(3, {'loss': 30.0})
  resumed.plot()
  records = metrics_lib.read_metrics(resumed.path)
  assert records == [
    {'step': 1, 'loss': 1.0},
    {'step': 2, 'loss': 2.0},
    {'step': 3, 'loss': 30.0},
  ]
  assert os.path.getsize(resumed.plot_path) > 1000


def test_metrics_writer_of_other_processes_writes_nothing(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path / 'w'), enabled=False)
  writer.write(1, {'loss': 1.0})
  writer.plot()
  assert not os.path.exists(tmp_path / 'w')


def test_progress_line_shows_step_loss_rate_and_eta():
  bar = progress_lib.ProgressBar(100, stream=io.StringIO())
  bar.line(10, 2.0, now=1000.0)  # Reference point (after compile).
  line = bar.line(30, 0.5, now=1010.0)  # 20 steps in 10 s.
  assert 'step 30/100' in line and 'loss 0.5000' in line
  assert '2.00 steps/s' in line and 'ETA 00:35' in line  # 70 steps / 2.


def test_progress_line_says_when_input_is_the_bottleneck():
  bar = progress_lib.ProgressBar(100, stream=io.StringIO())
  bar.line(10, 2.0, now=1000.0)
  assert 'data wait' not in bar.line(30, 0.5, now=1010.0, data_wait=0.2)
  line = bar.line(30, 0.5, now=1010.0, data_wait=0.63)
  assert line.endswith('data wait 63% (input-bound)')


def test_input_timer_reports_waits_and_throughput():
  now = [100.0]
  timer = metrics_lib.InputTimer(32, step=4, clock=lambda: now[0])
  for wait in (0.5, 1.0, 1.5):  # Steps 5, 6, 7.
    timer.waited(wait)
  now[0] = 112.0  # 3 steps of 32 examples in 12 s, 3 s of it waiting.
  assert timer.read(7) == {
    'data_wait_s': 1.0,
    'data_wait_fraction': 0.25,
    'examples_per_s': 8.0,
  }
  now[0] = 116.0  # The next interval starts afresh: 1 step, no waiting.
  assert timer.read(8) == {
    'data_wait_s': 0.0,
    'data_wait_fraction': 0.0,
    'examples_per_s': 8.0,
  }


@pytest.mark.parametrize('accumulation_steps', [2, 4])
def test_microbatches_take_every_kth_example(accumulation_steps):
  x = jnp.arange(8)
  micro = step_lib._split_microbatches({'x': x}, accumulation_steps)['x']
  assert micro.shape == (accumulation_steps, 8 // accumulation_steps)
  np.testing.assert_array_equal(
    np.sort(np.asarray(micro).ravel()), np.arange(8)
  )
  np.testing.assert_array_equal(micro[1], np.arange(1, 8, accumulation_steps))
