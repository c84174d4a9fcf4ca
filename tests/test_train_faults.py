"""Faults lose nothing: kills during a save, damaged checkpoints, NaNs.

References: an uninterrupted run in another workdir (for the kill and the
damaged-checkpoint cases) and a clean run's checkpoint (for the NaN case).
"""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import test_train_common as common
from perceiver.train import checkpoint as checkpoint_lib
from perceiver.train import loop

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _config(**overrides):
  return common.toy_config(
    **{
      'total_steps': 8,
      'checkpoint_every': 4,
      'model.dropout': 0.1,
      **overrides,
    }
  )


def _leaves(ts):
  return [np.asarray(x) for x in jax.tree.leaves((ts.params, ts.opt_state))]


def _assert_same_run(reference, resumed, steps):
  np.testing.assert_array_equal(
    [resumed['losses'][s] for s in steps],
    [reference['losses'][s] for s in steps],
  )
  for a, b in zip(
    _leaves(reference['train_state']), _leaves(resumed['train_state'])
  ):
    np.testing.assert_array_equal(a, b)


def _kill_during_save_worker(workdir, kill_step):
  """Trains; SIGKILLs itself after writing checkpoint `kill_step`'s files
  but before orbax commits (renames) them."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top

  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if self.get_final().name == str(kill_step):
      assert any(self.get().iterdir())  # Data files are on disk, uncommitted.
      os.kill(os.getpid(), signal.SIGKILL)
    return await original(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize
  loop.train(_config(), common.build_toy_task, workdir)


def test_sigkill_while_saving_resumes_from_previous_checkpoint(tmp_path):
  reference = loop.train(
    _config(), common.build_toy_task, str(tmp_path / 'reference')
  )
  workdir = str(tmp_path / 'killed')
  proc = subprocess.run(
    [sys.executable, '-m', 'tests.test_train_faults', 'kill', workdir, '8'],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  leftovers = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert '4' in leftovers and '8' not in leftovers, leftovers
  assert any(name.startswith('8.') for name in leftovers), leftovers

  resumed = loop.train(_config(), common.build_toy_task, workdir)
  assert resumed['start_step'] == 4
  _assert_same_run(reference, resumed, range(5, 9))
  # The temporary directory of the killed save was cleaned up.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']


def _damage(step_dir):
  damaged = 0
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        size = os.path.getsize(path)
        f.write(b'\x00garbage' * max(size // 8, 1))
      damaged += 1
  assert damaged


def test_damaged_latest_checkpoint_is_reported_and_previous_used(
  tmp_path, capsys
):
  reference = loop.train(
    _config(), common.build_toy_task, str(tmp_path / 'reference')
  )
  workdir = str(tmp_path / 'damaged')
  loop.train(_config(), common.build_toy_task, workdir)
  _damage(os.path.join(workdir, 'checkpoints', '8'))
  capsys.readouterr()

  resumed = loop.train(_config(), common.build_toy_task, workdir)
  out = capsys.readouterr().out
  assert 'Checkpoint at step 8' in out and 'damaged' in out, out
  assert resumed['start_step'] == 4
  _assert_same_run(reference, resumed, range(5, 9))
  assert os.listdir(os.path.join(workdir, 'checkpoints_damaged'))


def test_all_checkpoints_damaged_is_an_error(tmp_path):
  loop.train(_config(), common.build_toy_task, str(tmp_path))
  for step in ('4', '8'):
    _damage(os.path.join(str(tmp_path), 'checkpoints', step))
  with pytest.raises(RuntimeError, match='No checkpoint'):
    loop.train(_config(), common.build_toy_task, str(tmp_path))


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_checkpoint(
  tmp_path,
):
  clean_dir = str(tmp_path / 'clean')
  loop.train(_config(total_steps=4), common.build_toy_task, clean_dir)
  workdir = str(tmp_path / 'nan')
  # The batch of the 6th update (0-based index 5) is poisoned.
  with pytest.raises(FloatingPointError, match='at step 6'):
    loop.train(
      _config(**{'model.nan_at_step': 5}), common.build_toy_task, workdir
    )
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
  assert ckpt.all_steps() == [4]
  reference = checkpoint_lib.Checkpointer(
    os.path.join(clean_dir, 'checkpoints')
  )
  abstract = jax.eval_shape(lambda: loop_state(_config()))
  got = ckpt.restore(4, abstract)
  want = reference.restore(4, abstract)
  for a, b in zip(_leaves(got), _leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_loss_skipped_and_counted_when_configured(tmp_path):
  result = loop.train(
    _config(**{'model.nan_at_step': 5, 'nonfinite': 'skip'}),
    common.build_toy_task,
    str(tmp_path),
  )
  ts = result['train_state']
  assert result['nonfinite_count'] == 1
  assert int(ts.first_nonfinite) == 5 and int(ts.step) == 8
  assert np.isnan(result['losses'][6])
  assert all(np.isfinite(result['losses'][s]) for s in (1, 2, 3, 4, 5, 7, 8))
  assert all(np.all(np.isfinite(x)) for x in _leaves(ts))


def loop_state(config):
  """The abstract train state of the toy task (for direct restores)."""
  from perceiver.train import optim, step  # pylint: disable=g-import-not-at-top

  task = common.build_toy_task(config, 0, 1)
  schedule = optim.make_schedule(
    config.optimizer, config.batch_size, config.total_steps
  )
  return step.init_train_state(
    task.forward,
    optim.make_optimizer(config.optimizer, schedule),
    config.seed,
    task.example_batch,
  )


if __name__ == '__main__':
  if sys.argv[1] == 'kill':
    _kill_during_save_worker(sys.argv[2], int(sys.argv[3]))
