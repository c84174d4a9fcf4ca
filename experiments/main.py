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

The workdir gets the effective config (`config.json`) and the experiment
file and variant (`experiment.json`), so `perceiver.train.restore.restore(
workdir)` rebuilds the trained model.

`--help_config` lists every field of the chosen `--config` with its value
and a one-line description. A user error (an unknown field, a bad or
inconsistent value, a missing file, a workdir whose checkpoints were made
for another model) ends the run with a message of a few lines naming the
field, and exit status 2 (`USAGE_EXIT_CODE`); `--verbose` shows the
traceback instead.

Re-running the same command with the same workdir resumes from the latest
complete checkpoint (after checking that the config still fits its
parameter shapes; a finished run is left as it is). On SIGTERM (a preempted
job) every process checkpoints the same step and the job exits with status
75 (`PREEMPTED_EXIT_CODE`, BSD sysexits' EX_TEMPFAIL) after a message naming
the step; the same command continues from there.
"""

import difflib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from perceiver.train import config as config_lib
from perceiver.train import distributed
from perceiver.train import preemption

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, 'digits.py')

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  DEFAULT_CONFIG,
  'Experiment file and variant, e.g. experiments/digits.py:debug; '
  'override a field with --config.<field>=<value> (--help_config lists '
  'them).',
  lock_config=True,
)
_HELP_CONFIG = flags.DEFINE_bool(
  'help_config',
  False,
  'List every field of --config (the chosen experiment and variant) with '
  'its value and a description, then exit.',
)
_VERBOSE = flags.DEFINE_bool(
  'verbose',
  False,
  'Show the traceback of a user error (bad flag or config value, workdir '
  'that does not fit) instead of a short message.',
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Where the config, metrics, plots and checkpoints go '
  '(default: runs/<experiment name>).',
)
_COMPILE_ONLY = flags.DEFINE_bool(
  'compile_only',
  False,
  'Compile the train and eval steps for --topology (a TPU slice; needs '
  'the libtpu wheel, no TPU) and report memory, FLOPs, collectives and the '
  'roofline step time in <workdir>/compile_report.json; trains nothing.',
)
_TOPOLOGY = flags.DEFINE_string(
  'topology',
  None,
  "With --compile_only: the TPU slice, 'CHIP:SHAPE', e.g. v5e:4x4 or "
  'v5p:4x4x4.',
)
_NUM_SLICES = flags.DEFINE_integer(
  'num_slices', 1, 'With --compile_only: slices of --topology (Multislice).'
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


USAGE_EXIT_CODE = 2  # a user error, as for a bad command line
# What a user error raises: bad values and inconsistent fields (ValueError,
# also from the engine's checks and the workdir check), missing files.
USER_ERRORS = (ValueError, OSError)


def _fail(message: str) -> None:
  """Prints `message` for a user error and exits with USAGE_EXIT_CODE."""
  lines = [line for line in message.strip().splitlines() if line.strip()]
  if len(lines) > 5:  # e.g. a traceback inside the message: its ends
    lines = [lines[0], '...'] + lines[-2:]
  message = '\n'.join(lines)
  print(
    f'error: {message}\n(--verbose shows the traceback)',
    file=sys.stderr,
    flush=True,
  )
  sys.exit(USAGE_EXIT_CODE)


def _flag_value(argv, name: str):
  """The last value of --name=value or --name value in argv, else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _load_config(config_arg: str):
  """(experiment module, its config) for a --config value 'path[:variant]'."""
  path, _, variant = config_arg.partition(':')
  experiment = load_experiment(path)
  return experiment, experiment.get_config(variant)


def _explain_flag_error(argv, error: Exception) -> str:
  """A few lines naming the flag or field behind a parsing error."""
  config_arg = _flag_value(argv, 'config') or DEFAULT_CONFIG
  try:
    _, config = _load_config(config_arg)
  except ValueError as e:  # e.g. an unknown variant; names the field
    return str(e)
  except Exception as e:  # pylint: disable=broad-except
    return f'config: {config_arg} could not be loaded: {type(e).__name__}: {e}'
  fields = config_lib.flat_fields(config)
  sections = {n.rsplit('.', i)[0] for n in fields for i in range(1, 4)}
  for arg in argv[1:]:
    m = re.match(r'--config\.([\w.]+)(=|$)', arg)
    if not m or m.group(1) in fields or m.group(1) in sections:
      continue
    name = m.group(1)
    close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
    hint = f'; did you mean config.{close[0]}?' if close else ''
    return (
      f'config.{name}: no such field in {config_arg}{hint}\n'
      f'(--config={config_arg} --help_config lists the fields)'
    )
  lines = [line for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else f'{type(error).__name__} while parsing flags'


def _parse_flags(argv):
  """absl's flag parsing, with short messages and status 2 on errors."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if '--verbose' in argv or '--verbose=true' in argv:
      traceback.print_exc()
    _fail(_explain_flag_error(argv, e))


def _print_config_help(experiment, config, config_arg: str) -> None:
  try:
    comments = config_lib.field_comments(inspect.getsource(experiment))
  except (OSError, TypeError):
    comments = {}
  comments.update(getattr(experiment, 'DESCRIPTIONS', {}))
  rows = config_lib.describe(config, comments)
  print(f'Fields of {config_arg} (override with --config.<field>=<value>):')
  width = max(len(f'{n} = {v!r}') for n, v, _ in rows)
  width = min(width, 44)
  for name, value, text in rows:
    left = f'{name} = {value!r}'
    if len(left) > width:
      print(f'  {left}\n  {"":{width}}  {text}')
    else:
      print(f'  {left:{width}}  {text}')


def _run(argv):
  try:
    _run_checked(argv)
  except USER_ERRORS as e:
    if _VERBOSE.value:
      raise
    _fail(f'{e}' if isinstance(e, ValueError) else f'{type(e).__name__}: {e}')


def _compile_only(config_path: str, workdir: str) -> None:
  """--compile_only: the report of `perceiver.train.aot.compile_report`,
  printed and written to <workdir>/compile_report.json."""
  from perceiver.train import aot  # pylint: disable=g-import-not-at-top

  if not (_COMPILE_ONLY.value and _TOPOLOGY.value):
    raise ValueError(
      'compile_only: expected --compile_only together with --topology '
      f'(e.g. --topology=v5e:4x4), got --compile_only={_COMPILE_ONLY.value}'
      f' and --topology={_TOPOLOGY.value!r}.'
    )
  experiment = load_experiment(config_path)
  if not hasattr(experiment, 'compile_task'):
    raise ValueError(
      f'config: {config_path} has no compile_task(config) (the model '
      'without data that --compile_only compiles).'
    )
  task = experiment.compile_task(_CONFIG.value)
  report = aot.compile_report(
    task.config or _CONFIG.value,
    task,
    _TOPOLOGY.value,
    num_slices=_NUM_SLICES.value,
  )
  report['experiment'] = config_flags.get_config_filename(flags.FLAGS['config'])
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, aot.REPORT_FILE)
  aot.write_report(report, path)
  print(aot.format_report(report), flush=True)
  print(f'Wrote {path}.', flush=True)


def _run_checked(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_arg = config_flags.get_config_filename(flags.FLAGS['config'])
  config_path = config_arg.split(':', 1)[0]  # Drop the variant.
  if _HELP_CONFIG.value:
    experiment = load_experiment(config_path)
    _print_config_help(experiment, _CONFIG.value, config_arg)
    return
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save at INFO; keep the terminal for the progress bar.
    logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value or os.path.join(
    'runs', os.path.splitext(os.path.basename(config_path))[0]
  )
  if _COMPILE_ONLY.value or _TOPOLOGY.value:
    _compile_only(config_path, workdir)
    return
  distributed.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=True
  )
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top

  experiment = load_experiment(config_path)
  if not hasattr(experiment, 'build_task'):
    raise ValueError(
      f'config: {config_path} has no build_task(config, '
      'process_index, process_count).'
    )
  try:
    loop.train(
      _CONFIG.value, experiment.build_task, workdir, experiment=config_arg
    )
  except preemption.Preempted:
    # train() has checkpointed the step and said so.
    sys.exit(preemption.PREEMPTED_EXIT_CODE)


def main():
  """Console-script entry point (`perceiver-train`)."""
  app.run(_run, flags_parser=_parse_flags)


if __name__ == '__main__':
  sys.exit(main())
