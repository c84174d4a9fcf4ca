"""The fields every experiment config has, and their checks.

`base_config()` gives the engine's fields with their defaults; an experiment's
`get_config(arg)` starts from it, adds a `model` section and adds its own
fields to the `data` section (keeping the loader's: `data.worker_count`,
`data.prefetch`, `data.skip_corrupt`, which its `build_task` passes to
`data.train_iterator`).
`validate(config, ...)` rejects bad or inconsistent values before anything
is compiled, with a `ValueError` naming the field, the expected and what came.
"""

from typing import Any

import ml_collections

from perceiver import validation
from perceiver.train import optim

PRECISIONS = ('float32', 'bfloat16')
NONFINITE_POLICIES = ('stop', 'skip')


def base_config() -> ml_collections.ConfigDict:
  """Engine defaults; experiments override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 1024  # global, over every device of every process
  c.total_steps = 1000
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.async_checkpoint = False
  c.eval_every = 0  # 0: evaluate only at the end
  c.eval_batch_size = 1000
  c.accumulation_steps = 1  # microbatches per update
  c.precision = 'float32'  # or 'bfloat16' (params f32, compute bf16)
  c.fsdp = 1  # size of the FSDP mesh axis; 1 = replicated
  c.nonfinite = 'stop'  # or 'skip' (skip the update and count it)
  c.progress_bar = True
  c.tensorboard = True
  c.plot_curves = True  # training_curves.png at the end of a run
  # Evaluate the workdir's latest checkpoint (or the task's warm start, e.g.
  # a released checkpoint given as init_checkpoint) and stop: no training
  # step, no checkpoint written.
  c.eval_only = False
  c.optimizer = optim.default_config()
  c.data = ml_collections.ConfigDict(
    dict(
      worker_count=0,  # loader worker processes (0: read in this process)
      prefetch=2,  # batches each worker keeps ready
      skip_corrupt=False,  # replace unreadable records (and count them)
    )
  )
  return c


def _field_positive_int(
  config, name: str, allow_zero: bool = False, prefix: str = ''
) -> None:
  value = config[name]
  ok = (
    isinstance(value, int)
    and not isinstance(value, bool)
    and (value > 0 or (allow_zero and value == 0))
  )
  if not ok:
    what = 'a non-negative' if allow_zero else 'a positive'
    raise ValueError(f'{prefix}{name}: expected {what} integer, got {value!r}.')


def validate(
  config: ml_collections.ConfigDict,
  *,
  device_count: int,
  process_count: int = 1,
) -> None:
  """Checks the engine's fields; raises ValueError naming the bad one."""
  for name in ('seed',):
    if not isinstance(config[name], int) or isinstance(config[name], bool):
      raise ValueError(f'{name}: expected an integer, got {config[name]!r}.')
  for name in (
    'batch_size',
    'total_steps',
    'log_every',
    'checkpoint_every',
    'keep_checkpoints',
    'eval_batch_size',
    'accumulation_steps',
    'fsdp',
  ):
    _field_positive_int(config, name)
  _field_positive_int(config, 'eval_every', allow_zero=True)
  validation.check_choice('precision', config.precision, PRECISIONS)
  validation.check_choice('nonfinite', config.nonfinite, NONFINITE_POLICIES)
  if device_count % config.fsdp:
    raise ValueError(
      f'fsdp: expected a divisor of the device count '
      f'{device_count}, got {config.fsdp}.'
    )
  if config.batch_size % process_count:
    raise ValueError(
      f'batch_size: expected a multiple of the process count '
      f'{process_count}, got {config.batch_size}.'
    )
  if config.batch_size % config.accumulation_steps:
    raise ValueError(
      f'batch_size: expected a multiple of accumulation_steps='
      f'{config.accumulation_steps}, got {config.batch_size}.'
    )
  micro = config.batch_size // config.accumulation_steps
  if micro % device_count:
    raise ValueError(
      f'batch_size: expected batch_size / accumulation_steps to be a '
      f'multiple of the device count {device_count}, got '
      f'{config.batch_size} / {config.accumulation_steps} = {micro}.'
    )
  if config.eval_batch_size % device_count:
    raise ValueError(
      f'eval_batch_size: expected a multiple of the device count '
      f'{device_count}, got {config.eval_batch_size}.'
    )
  validate_optimizer(config.optimizer)
  validate_loader(config.get('data'))


def validate_loader(data: Any) -> None:
  """Checks the loader counts of the `data` section that are present
  (ConfigDict itself keeps `skip_corrupt` a bool)."""
  if data is None:
    return
  for name in ('worker_count', 'prefetch'):
    if name in data:
      _field_positive_int(data, name, allow_zero=True, prefix='data.')


def validate_optimizer(opt: Any) -> None:
  validation.check_choice('optimizer.name', opt.name, optim.OPTIMIZERS)
  validation.check_choice('optimizer.schedule', opt.schedule, optim.SCHEDULES)
  for name in ('base_lr', 'weight_decay', 'clip_norm', 'end_lr', 'eps'):
    value = opt[name]
    if (
      not isinstance(value, (int, float))
      or isinstance(value, bool)
      or value < 0
    ):
      raise ValueError(
        f'optimizer.{name}: expected a non-negative number, got {value!r}.'
      )
  if not 0.0 <= opt.constant_fraction <= 1.0:
    raise ValueError(
      f'optimizer.constant_fraction: expected a number in '
      f'[0, 1], got {opt.constant_fraction!r}.'
    )
  for name in ('b1', 'b2'):
    if not 0.0 <= opt[name] < 1.0:
      raise ValueError(
        f'optimizer.{name}: expected a number in [0, 1), got {opt[name]!r}.'
      )
  if not isinstance(opt.warmup_steps, int) or opt.warmup_steps < 0:
    raise ValueError(
      f'optimizer.warmup_steps: expected a non-negative '
      f'integer, got {opt.warmup_steps!r}.'
    )
