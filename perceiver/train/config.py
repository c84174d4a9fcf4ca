"""The fields every experiment config has, and their checks.

`base_config()` gives the engine's fields with their defaults; an experiment's
`get_config(arg)` starts from it, adds a `model` section and adds its own
fields to the `data` section (keeping the loader's: `data.worker_count`,
`data.prefetch`, `data.skip_corrupt`, which `data.train_iterator_from_config`
and `data.eval_batches_from_config` read). `init_checkpoint` is the warm
start of the experiments that have one (their `Task.init_params`, made by
`warm_start.init_params_hook`), `init_must_load` the modules it must
provide; the others refuse a path.
`validate(config, ...)` rejects bad or inconsistent values before anything
is compiled, with a `ValueError` naming the field, the expected and what came.

The data's size is discovered, not declared: an experiment whose schedule
follows its data leaves `num_train` (and e.g. `model.num_classes`) as
`placeholder` fields, None until known, and derives `total_steps = epochs x
num_train // batch_size` from them (a `FieldReference` expression, None
while `num_train` is). Its `build_task` counts the training split and
returns `from_data(config, {'num_train': n, ...}, where=...)` as
`Task.config`, which the engine runs with from then on (`data_summary`
says where each value came from). A value the user set wins: an explicit
`total_steps` replaces the expression, and a set `num_train` must equal
what the reader counted.
"""

import copy
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections
from ml_collections import config_dict

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
  # Warm start: a checkpoint whose parameters initialise the model on a
  # fresh start (never on a resume), through the task's `init_params`; ''
  # for none. An experiment whose task cannot warm-start refuses a path.
  c.init_checkpoint = ''
  # Regular expressions over module names (each matching a whole name): the
  # modules that must load from init_checkpoint (their leaves missing or
  # mis-shaped there is an error); the other modules' leaves load when the
  # checkpoint has them and stay fresh otherwise. Default: every module.
  c.init_must_load = ('.*',)
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


# One line per field of `base_config()` (and `optimizer.default_config()`);
# `experiments.main --help_config` prints them with each field's value.
DESCRIPTIONS = {
  'seed': 'seed of the initialisation, the dropout and the data order',
  'batch_size': 'global batch: examples per update over every device of '
  'every process',
  'total_steps': 'number of updates of the whole run',
  'log_every': 'steps between two training records in metrics.jsonl',
  'checkpoint_every': 'steps between two checkpoints (one is always '
  'written at the end)',
  'keep_checkpoints': 'how many of the newest checkpoints are kept',
  'async_checkpoint': 'write checkpoints in the background while training '
  'goes on',
  'eval_every': 'steps between two evaluations on the held-out data; 0: '
  'only at the end',
  'eval_batch_size': 'global batch of the evaluation',
  'accumulation_steps': 'microbatches per update (gradient accumulation); '
  'divides batch_size',
  'precision': "'float32', or 'bfloat16' (params in float32, compute in "
  'bfloat16)',
  'fsdp': 'size of the FSDP mesh axis (parameters sharded over it); 1: '
  'replicated',
  'nonfinite': "on a non-finite loss or gradient: 'stop' the run, or 'skip' "
  'the update and count it',
  'progress_bar': 'show a progress bar on the terminal',
  'tensorboard': 'also write TensorBoard events to <workdir>/tensorboard',
  'plot_curves': 'write training_curves.png at the end of a run',
  'init_checkpoint': 'warm start: a workdir or checkpoint whose parameters '
  "initialise the model ('' for none): a workdir, a checkpoint directory, "
  'an .npz of perceiver.checkpoints.save or a released pickle',
  'init_must_load': 'regular expressions over module names: the modules '
  'that must load from init_checkpoint (the others may stay fresh)',
  'eval_only': "evaluate the workdir's latest checkpoint (or the warm "
  'start) and stop, without training',
  'optimizer.name': "'lamb' or 'adamw' (both after global-norm clipping)",
  'optimizer.base_lr': 'peak learning rate (before scale_by_batch)',
  'optimizer.scale_by_batch': 'multiply base_lr by batch_size / 256',
  'optimizer.schedule': "'constant_cosine', 'warmup_cosine' or 'constant'",
  'optimizer.constant_fraction': 'constant_cosine: fraction of the steps '
  'at the constant rate before the cosine decay',
  'optimizer.warmup_steps': 'warmup_cosine: steps of linear warmup from 0',
  'optimizer.end_lr': 'learning rate at the end of the cosine decay',
  'optimizer.b1': 'Adam/LAMB decay rate of the first moment',
  'optimizer.b2': 'Adam/LAMB decay rate of the second moment',
  'optimizer.eps': 'Adam/LAMB epsilon',
  'optimizer.weight_decay': 'decoupled weight decay (not on biases and '
  'norm parameters)',
  'optimizer.decay_pos_embs': 'also decay the position embeddings',
  'optimizer.clip_norm': 'clip the gradient to this global norm; 0: no '
  'clipping',
  'data.worker_count': 'loader worker processes (0: read in this process)',
  'data.prefetch': 'batches each loader worker keeps ready',
  'data.skip_corrupt': 'replace unreadable records (and count them) '
  'instead of stopping',
}
# Fields several experiments add, with the same meaning.
COMMON_DESCRIPTIONS = {
  'epochs': 'passes over the training split (total_steps follows from it)',
  'num_train': 'number of training examples used (None: counted in the data)',
  'data.dir': 'directory of the dataset',
  'data.label_smoothing': 'label smoothing of the cross-entropy',
  'data.image_size': 'side of the (square) images, in pixels',
  'data.audio_rate': 'audio samples per second',
  'data.fps': 'video frames per second',
  'data.seq_len': 'tokens (bytes) per sequence',
  'model.num_latents': 'N: number of latent vectors',
  'model.z_index_dim': 'N: number of latent vectors',
  'model.num_z_channels': 'D: channels of each latent vector',
  'model.num_blocks': 'latent blocks (weights shared across blocks)',
  'model.num_self_attends_per_block': 'self-attention layers per block',
  'model.num_self_attend_heads': 'heads of the latent self-attention',
  'model.num_cross_attend_heads': 'heads of the encoder cross-attention',
  'model.num_heads': 'attention heads',
  'model.qk_channels': 'channels of queries and keys (None: from the inputs)',
  'model.v_channels': 'channels of the values (None: from the queries)',
  'model.widening_factor': 'MLP width / channels',
  'model.dropout_prob': 'dropout probability',
  'model.d_model': 'channels of the token embeddings',
  'model.embed_init_scale': 'init stddev of the byte table, also the tied '
  'output layer (released: 1.0)',
  'model.num_bands': 'Fourier position-encoding bands per axis',
  'model.num_classes': 'number of output classes (None: found in the data)',
  'model.image_size': 'side of the input images, in pixels',
  'model.decoder_num_channels': 'channels of the decoder query',
  'model.attention_impl': "self-attention kernel: 'reference' or another "
  'implementation of perceiver.attention',
  'model.cross_attention_impl': 'cross-attention kernel (see '
  'perceiver.attention)',
  'model.remat': 'recompute activations in the backward pass (less memory)',
  'model.scan_blocks': 'compile the repeated blocks once (jax.lax.scan)',
  'model.scan_layers': 'compile the repeated self-attention layers once '
  '(jax.lax.scan)',
}


def variant(arg: str, choices: Sequence[str], *, what: str) -> str:
  """`arg`, the variant of `--config=FILE:arg`, checked against `choices`.

  Args:
    arg: the text after the colon ('' for none).
    choices: the variants the experiment has, '' among them.
    what: the experiment, for the message (e.g. 'digits').

  Returns:
    `arg`.

  Raises:
    ValueError: `arg` not among `choices`, naming the experiment and them.
  """
  if arg not in tuple(choices):
    raise ValueError(
      f'config: expected a variant of {what} among {list(choices)}, '
      f'got {arg!r}.'
    )
  return arg


def variants(
  arg: str,
  choices: Sequence[str],
  *,
  what: str,
  exclusive: Sequence[Sequence[str]] = (),
) -> List[str]:
  """The comma-separated variants of `arg`, each checked against `choices`.

  Args:
    arg: the text after the colon, e.g. 'conv,debug' ('' for none).
    choices: the variants the experiment has.
    what: the experiment, for the message (e.g. 'imagenet').
    exclusive: groups of variants of which at most one may be given.

  Returns:
    The variants, in the order given.

  Raises:
    ValueError: a variant not among `choices`, or two of one `exclusive`
      group, naming the experiment and the choices.
  """
  parts = [p for p in arg.split(',') if p]
  if any(p not in tuple(choices) for p in parts):
    raise ValueError(
      f'config: expected variants of {what} among {list(choices)}, '
      f'comma-separated, got {arg!r}.'
    )
  for group in exclusive:
    if len([p for p in parts if p in group]) > 1:
      raise ValueError(
        f'config: expected at most one of {list(group)} in the variants of '
        f'{what}, got {arg!r}.'
      )
  return parts


def quick_test(c: ml_collections.ConfigDict, *, log_every: int = 1) -> None:
  """Sets the engine fields of a `:debug` run (a test of seconds): every
  `log_every` steps a training record, and no progress bar, TensorBoard
  events or training_curves.png (seconds of imports and drawing)."""
  c.log_every = log_every
  c.progress_bar = False
  c.tensorboard = False
  c.plot_curves = False


def flat_fields(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """{'model.num_latents': 8, ...}: every leaf field by its dotted name."""
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update({f'{k}.{n}': x for n, x in flat_fields(v).items()})
    else:
      out[k] = v
  return out


_ASSIGN = re.compile(r'^\s*c\.([\w.]+)\s*=[^=#][^#]*#\s*(\S.*)$')
_SECTION = re.compile(r'^(\s*)c\.([\w.]+)(\s*=.*ConfigDict\(|\.update\()\s*$')
_KEYWORD = re.compile(r'^\s*(\w+)=[^#]*#\s*(\S.*)$')


def field_comments(source: str) -> Dict[str, str]:
  """Field descriptions from the comments of a `get_config` source: of
  `c.<field> = value  # comment` lines and of `name=value,  # comment` lines
  inside `c.<section> = ConfigDict(dict(...))` or `c.<section>.update(...)`.
  The first comment of a field wins."""
  found: Dict[str, str] = {}
  section: Optional[Tuple[str, int]] = None
  for line in source.splitlines():
    stripped = line.strip()
    indent = len(line) - len(line.lstrip())
    if section is not None and stripped and indent <= section[1]:
      section = None
    m = _SECTION.match(line)
    if m:
      section = (m.group(2), len(m.group(1)))
      continue
    m = _ASSIGN.match(line)
    if m:
      found.setdefault(m.group(1), m.group(2))
      continue
    m = _KEYWORD.match(line)
    if m and section is not None:
      found.setdefault(f'{section[0]}.{m.group(1)}', m.group(2))
  return found


def describe(
  config: ml_collections.ConfigDict,
  experiment: Optional[Dict[str, str]] = None,
) -> List[Tuple[str, Any, str]]:
  """(field, value, one-line description) of every field of `config`.

  Descriptions come from `DESCRIPTIONS`, then `COMMON_DESCRIPTIONS`, then
  `experiment` (an experiment's own, e.g. its `field_comments`); a field
  without any is described by its type.
  """
  experiment = experiment or {}
  rows = []
  for name, value in sorted(flat_fields(config).items()):
    text = (
      DESCRIPTIONS.get(name)
      or COMMON_DESCRIPTIONS.get(name)
      or experiment.get(name)
      or f'experiment field ({type(value).__name__})'
    )
    rows.append((name, value, text))
  return rows


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


def placeholder() -> ml_collections.FieldReference:
  """An integer field left None until the data gives it (`from_data`); the
  command line can still set it (`--config.num_train=1000`)."""
  return config_dict.placeholder(int)


def from_data(
  config: ml_collections.ConfigDict,
  found: Mapping[str, int],
  *,
  where: str,
) -> ml_collections.ConfigDict:
  """A copy of `config` with the values its data gave filled in.

  An experiment calls it in `build_task` once its readers have counted the
  training data, e.g. `found={'num_train': len(train), 'model.num_classes':
  k}`, and returns the copy as `Task.config`. A field that is None takes
  the found value, and the fields computed from it follow (`total_steps =
  epochs x num_train // batch_size`, unless `total_steps` was set); a field
  already set must equal the found value. `config` itself is not changed.

  Args:
    config: the run's config (locked or not).
    found: {dotted field name: value the data gave}; every name must be a
      field of `config`.
    where: what was counted (e.g. the training directory), for the message.

  Returns:
    The copy, with `config`'s lock state.

  Raises:
    ValueError: a set field different from the found value (naming the
      field, both values and `where`), or a name that is not a field.
  """
  out = copy.deepcopy(config)
  fields = flat_fields(out)
  for name, value in found.items():
    if name not in fields:
      raise ValueError(
        f'found: expected fields of the config, got {name!r} (from {where}).'
      )
    if fields[name] is None:
      *path, last = name.split('.')
      section = out
      for part in path:
        section = section[part]
      section[last] = value
    elif fields[name] != value:
      raise ValueError(
        f'{name}: expected {value} (found in {where}), got {fields[name]}; '
        f'leave {name} unset to take it from the data.'
      )
  return out


def data_summary(
  given: ml_collections.ConfigDict, used: ml_collections.ConfigDict
) -> str:
  """One line saying where `num_train` and `total_steps` came from.

  Args:
    given: the config as the user gave it.
    used: the config the run uses (`Task.config`, or `given`).

  Returns:
    E.g. 'Training data: num_train=18 (counted in the data), model.
    num_classes=3 (found in the data); total_steps=5 = epochs 10 x
    num_train 18 // batch_size 32.': num_train '(counted in the data)' or
    '(set)', then every other field the data filled in; total_steps with
    the expression it equals, or '(set)'. '' for a config without
    num_train.
  """
  if 'num_train' not in used:
    return ''
  before, after = flat_fields(given), flat_fields(used)
  filled = [
    n
    for n in sorted(after)
    if before.get(n) is None
    and after[n] is not None
    and n not in ('num_train', 'total_steps')
  ]

  def origin(name):
    if before.get(name) is not None:
      return 'set'
    return 'counted in the data' if name == 'num_train' else 'found in the data'

  parts = [f'{n}={after[n]} ({origin(n)})' for n in ['num_train'] + filled]
  steps = f'total_steps={used.total_steps}'
  if 'epochs' in used and used.total_steps == (
    used.epochs * used.num_train // used.batch_size
  ):
    steps += (
      f' = epochs {used.epochs} x num_train {used.num_train} // '
      f'batch_size {used.batch_size}'
    )
  else:
    steps += ' (set)'
  return f'Training data: {", ".join(parts)}; {steps}.'


def _check_derived_total_steps(config) -> None:
  """Explains a total_steps of 0 derived from a batch larger than the data
  (experiments with `epochs` and `num_train` fields)."""
  if config.total_steps != 0 or 'num_train' not in config:
    return
  if config.batch_size > config.num_train:
    raise ValueError(
      f'batch_size: expected at most num_train={config.num_train} (the '
      f'number of training examples), got {config.batch_size}; it makes '
      f'total_steps 0.'
    )


def _pending_data_size(config: ml_collections.ConfigDict) -> bool:
  """Whether `total_steps` waits for the data: it and `num_train` are None
  (the task's `from_data` fills them in)."""
  return config.total_steps is None and config.get('num_train', 0) is None


def validate(
  config: ml_collections.ConfigDict,
  *,
  device_count: int,
  process_count: int = 1,
) -> None:
  """Checks the engine's fields; raises ValueError naming the bad one.

  A `total_steps` of None passes while `num_train` is None too (see
  `_pending_data_size`); the engine checks the task's config again.
  """
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
    if name == 'total_steps':
      if _pending_data_size(config):
        continue
      _check_derived_total_steps(config)
    _field_positive_int(config, name)
  _field_positive_int(config, 'eval_every', allow_zero=True)
  validation.check_choice('precision', config.precision, PRECISIONS)
  validation.check_choice('nonfinite', config.nonfinite, NONFINITE_POLICIES)
  validation.check_regexes('init_must_load', config.init_must_load)
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
