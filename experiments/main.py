"""The one entry point: trains any experiment in `experiments/`.

  python -m experiments.main --config=experiments/digits.py[:debug] \
      --workdir=runs/digits [--config.batch_size=256 ...]

(also installed as the `perceiver-train` console script). `--config` names an
experiment file: its `get_config(arg)` gives the config (`:arg` picks a
variant) and its `build_task(config, process_index, process_count)` the model
and data. Any field can be overridden with `--config.<field>=<value>`.
Multi-host jobs pass `--coordinator_address`, `--num_processes` and
`--process_id` to every process (or run under SLURM / a TPU pod, whose
environment JAX reads by itself).

Re-running the same command with the same workdir resumes from the latest
complete checkpoint. On SIGTERM (a preempted job) every process checkpoints
the same step and the job exits with status 75 (`PREEMPTED_EXIT_CODE`, BSD
sysexits' EX_TEMPFAIL) after a message naming the step; the same command
continues from there.
"""

import importlib
import importlib.util
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from perceiver.train import distributed
from perceiver.train import preemption

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, 'digits.py')

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  DEFAULT_CONFIG,
  'Experiment file and variant, e.g. experiments/digits.py:debug.',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Where the config, metrics, plots and checkpoints go '
  '(default: runs/<experiment name>).',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'host:port of the process-0 coordinator.'
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'Number of processes of a multi-host job.'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, 'This process index in [0, num_processes).'
)


def load_experiment(config_path: str):
  """Imports the experiment file (the path given to --config, no variant)."""
  path = os.path.abspath(config_path)
  if not os.path.isfile(path):
    raise ValueError(
      f'config: expected an experiment file, got {config_path!r}.'
    )
  if os.path.dirname(path) == _HERE:
    name = os.path.splitext(os.path.basename(path))[0]
    return importlib.import_module(f'experiments.{name}')
  spec = importlib.util.spec_from_file_location('experiment', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save at INFO; keep the terminal for the progress bar.
    logging.set_verbosity(logging.WARNING)
  distributed.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=True
  )
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top

  config_path = config_flags.get_config_filename(flags.FLAGS['config'])
  config_path = config_path.split(':', 1)[0]  # Drop the variant.
  experiment = load_experiment(config_path)
  if not hasattr(experiment, 'build_task'):
    raise ValueError(
      f'config: {config_path} has no build_task(config, '
      'process_index, process_count).'
    )
  workdir = _WORKDIR.value or os.path.join(
    'runs', os.path.splitext(os.path.basename(config_path))[0]
  )
  if hasattr(experiment, 'validate'):
    # The experiment's own checks first: they explain derived fields
    # (e.g. a total_steps of 0) that the engine's checks can only reject.
    experiment.validate(_CONFIG.value)
  try:
    loop.train(_CONFIG.value, experiment.build_task, workdir)
  except preemption.Preempted:
    # train() has checkpointed the step and said so.
    sys.exit(preemption.PREEMPTED_EXIT_CODE)


def main():
  """Console-script entry point (`perceiver-train`)."""
  app.run(_run)


if __name__ == '__main__':
  sys.exit(main())
