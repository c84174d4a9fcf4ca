"""python -m experiments.main --config=experiments/glue.py:movie_reviews --workdir=runs/movie_reviews

GLUE fine-tuning of the byte-level Perceiver IO (Sec. 4.1, App. F.4, Tables
1, 2, 13, 14). The model is the MLM encoder (byte
embedding + learned positions + `PerceiverEncoder`: the `language_mlm`
preset's modules, `presets.language_mlm_modules`), a cross-attention decoder
whose query reads the task output (the MLM decoder's settings: 8 heads,
queries of E = 768 channels, no final projection) and, per task, a 2-layer
MLP with a tanh hidden layer of E units mapping that output to logits or the
STS-B score.
Loss: cross-entropy, or squared error for STS-B.

`--config.model.arch=transformer` fine-tunes the paper's byte-level
baseline instead (Table 1, "BERT (matching FLOPs)";
`perceiver.byte_transformer`, sizes in `model.transformer`): it has no
decoder, so each head reads the Transformer's final state at a CLS byte, as
BERT's classifier reads its [CLS] token (the paper's baseline is a BERT
reimplementation; TaskHead's tanh layer is BERT's pooler): one CLS before
the text for one task ('single'), the shared token or task t's token in the
token modes; 'task_queries' needs the Perceiver's decoder and is refused.

Recipe (Table 13): LAMB, learning rate in {1e-4, 5e-5, 2e-5, 1e-5}, batch
in {16, 32, 64}, 200 linear warm-up steps, 10 epochs, weight decay 0.01; the
paper does not give the decay after warm-up: cosine to 0 here. `sweep` runs
the grid and keeps the best dev score per task.

Data (`data.dir`, never downloaded): GLUE as distributed
(`DIR/<TASK>/train.tsv`, `dev.tsv`, MNLI `dev_matched.tsv` /
`dev_mismatched.tsv`; see `experiments/data/glue.py`). The schedule follows
the data: `num_train` is the number of training examples read (a set value
must match), total_steps = epochs x num_train / batch_size unless
`--config.total_steps` is given. Variants:

* `:<TASK>` (e.g. `:RTE`; default SST-2): one task, one learned query.
* `:multitask`: the eight tasks at once (Table 2), records mixed in
  proportion to the tasks' sizes; `model.mode` picks (a) 'shared_token': one
  CLS token before the text, every task's head reads its output; (b)
  'task_tokens': 8 learned task tokens before the text, task t's head reads
  the output at token t; (c) 'task_queries' (default, the multitask query):
  8 learned decoder queries, no extra tokens. (a) and (b) query the output at
  the tokens' positions with the MLM decoder's learned position queries.
* `:movie_reviews`: SST-2-format Rotten Tomatoes sentences vendored in
  `experiments/data/movie_reviews` and the `experiments/mlm.py:local` model
  (pass `--config.init_checkpoint=runs/mlm` to start from that run); its
  records are as long as that model's position table (32 bytes), so each
  sentence is cut to its first bytes (`data.truncate`; the count is printed:
  95% of the training sentences, median length 109 bytes); prints
  `dev accuracy: NN.N%` at the end.
* `:debug`: a tiny model, 3 steps on the vendored sentences.

Metrics (`make_evaluators`, every `eval_every` steps and at the end): per task
and dev split as the paper reports them (Matthews for CoLA, Pearson/Spearman
for STS-B, accuracy and F1 for MRPC and QQP, accuracy otherwise, x100) and the
dev loss, logged as `eval/<TASK>/<metric>` (MNLI: `eval/MNLI-m/...`,
`eval/MNLI-mm/...`), and the GLUE average (`eval/glue_average`) when all eight
are present; one printed line per task and split, then `GLUE average: X` or,
for one classification task, `dev accuracy: NN.N%`.

Warm start (`Task.init_params`, on a fresh start only):
`--config.init_checkpoint` takes an MLM run of `experiments/mlm.py` (its
workdir or a checkpoint directory), an `.npz` of `perceiver.checkpoints.save`
or the released `language_perceiver_io_bytes.pickle`
(`perceiver.train.warm_start`). The encoder modules (`init_must_load`:
`ENCODER_MODULES`, of either `model.arch`) must load; every other leaf with
the same name and shape is loaded too (the decoder's attention), and the
rest keeps its fresh initialisation (the task queries, task tokens and
heads); the printed `Warm start` line lists them.
"""

import copy
import functools
import inspect
import os
from typing import Dict, List, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import perceiver as P
from experiments import mlm
from experiments.data import glue as glue_data
from experiments.data import text as text_data
from perceiver import byte_transformer
from perceiver import presets
from perceiver import train as train_lib
from perceiver import validation
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import evaluation
from perceiver.train import warm_start
from perceiver.train.task import Task

MODES = ('single', 'shared_token', 'task_tokens', 'task_queries')
VENDORED_REVIEWS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'data', 'movie_reviews'
)
STSB_ID = glue_data.TASK_NAMES.index('STS-B')
# Metric names of MNLI's two dev splits, as the paper reports them.
_SPLIT_NAMES = {'dev_matched': 'MNLI-m', 'dev_mismatched': 'MNLI-mm'}
# --help_config: the model fields are the MLM's, described by its comments.
DESCRIPTIONS = {
  k: v
  for k, v in config_lib.field_comments(inspect.getsource(mlm)).items()
  if k.startswith('model.')
}


# The modules that must come from init_checkpoint (`init_must_load`): the
# byte embedding, the input positions and the encoder of either model.
ENCODER_MODULES = (
  'embed',
  'trainable_position_encoding',
  'perceiver_encoder/.*',
  'byte_transformer_encoder/.*',
)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """`arg`: a GLUE task name, 'multitask', 'movie_reviews' or 'debug'."""
  arg = config_lib.variant(
    arg,
    ('',) + tuple(glue_data.TASKS) + ('multitask', 'movie_reviews', 'debug'),
    what='glue',
  )
  c = config_lib.base_config()
  c.seed = 0
  c.init_must_load = ENCODER_MODULES  # the head and task queries may be fresh
  c.batch_size = 32
  c.epochs = 10
  # None: the training examples found (e.g. 2,490 for RTE: 778 steps).
  c.num_train = config_lib.placeholder()
  c.total_steps = (
    c.get_ref('epochs') * c.get_ref('num_train') // c.get_ref('batch_size')
  )
  c.log_every = 50
  c.checkpoint_every = 1000
  c.eval_batch_size = 64

  c.optimizer.name = 'lamb'
  c.optimizer.base_lr = 2e-5
  c.optimizer.scale_by_batch = False
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 200
  c.optimizer.end_lr = 0.0
  c.optimizer.weight_decay = 0.01
  c.optimizer.clip_norm = 1.0

  # The loader's fields (worker_count, prefetch, skip_corrupt) stay.
  c.data.update(
    dict(
      dir='',  # the GLUE root; required
      task='SST-2',  # or 'all' (multitask)
      seq_len=2048,
      truncate=False,
      skip_malformed=False,
    )
  )
  c.model = copy.deepcopy(mlm.get_config().model)
  c.model.unlock()
  c.model.mode = 'single'  # or for 'multitask': see the module docstring

  if arg in glue_data.TASKS:
    c.data.task = arg
  elif arg == 'multitask':
    c.data.task = 'all'
    c.model.mode = 'task_queries'
  elif arg in ('movie_reviews', 'debug'):
    local = mlm.get_config('local')
    c.data.dir = VENDORED_REVIEWS
    c.data.seq_len = local.data.seq_len  # the MLM position table's size
    c.data.truncate = True  # reviews are longer: cut, counted
    c.model.update(local.model)
    c.optimizer.base_lr = 1e-4
    c.epochs = 2  # ~600 steps: sized for two runs in 30 minutes on 2 cores
    if arg == 'debug':
      c.total_steps = 3  # replaces epochs x num_train / batch_size
      c.batch_size = 8
      config_lib.quick_test(c)
      c.checkpoint_every = 3
      c.optimizer.warmup_steps = 1
      c.data.seq_len = 64
      c.data.truncate = True
      c.model.update(mlm.get_config('debug').model)
  c.lock()
  return c


def tasks_of(config) -> Sequence[str]:
  """The tasks the model has heads for, in TASK_NAMES order."""
  if config.data.task == 'all':
    return glue_data.TASK_NAMES
  return (config.data.task,)


def num_prefix_tokens(config) -> int:
  """P: tokens before the text (1 shared, 8 task tokens, 1 CLS for one
  task on the Transformer, else 0)."""
  mode = config.model.mode
  if mode == 'single' and config.model.arch == 'transformer':
    return 1
  return {'shared_token': 1, 'task_tokens': len(tasks_of(config))}.get(mode, 0)


def validate(config) -> None:
  """Checks the GLUE-specific fields (the engine checks the rest)."""
  if not config.data.dir or not os.path.isdir(config.data.dir):
    raise ValueError(
      f'data.dir: expected an existing directory holding GLUE, got '
      f'{config.data.dir!r}.'
    )
  validation.check_choice(
    'data.task', config.data.task, glue_data.TASK_NAMES + ('all',)
  )
  validation.check_choice('model.mode', config.model.mode, MODES)
  multi = config.data.task == 'all'
  if multi == (config.model.mode == 'single'):
    raise ValueError(
      f"model.mode: expected 'single' for one task and one of {MODES[1:]} "
      f"for data.task='all', got {config.model.mode!r} with data.task="
      f'{config.data.task!r}.'
    )
  mlm.validate_arch(config)
  if config.model.arch == 'transformer' and config.model.mode == 'task_queries':
    raise ValueError(
      "model.mode: expected 'shared_token' or 'task_tokens' for "
      "model.arch='transformer' (its heads read CLS tokens; it has no "
      "decoder queries), got 'task_queries'."
    )
  validation.check_positive('data.seq_len', config.data.seq_len)
  validation.check_positive('epochs', config.epochs)
  validation.check_positive('num_train', config.num_train, True)


# ---------------------------------------------------------------------------
# Model and loss.
# ---------------------------------------------------------------------------


class TaskHead(hk.Module):
  """Linear(E) -> tanh -> Linear(outputs): the App. F.4 head of one task."""

  def __init__(self, num_outputs: int, hidden: int, name=None):
    super().__init__(name=name)
    self._num_outputs = num_outputs
    self._hidden = hidden

  def __call__(self, x_BE):
    """[B, E] -> [B, num_outputs]."""
    h_BE = jnp.tanh(hk.Linear(self._hidden)(x_BE))
    return hk.Linear(self._num_outputs)(h_BE)


def make_forward(config) -> hk.TransformedWithState:
  """batch {'inputs', 'input_mask': int32 [B, L]} -> {'logits': [B, T, K],
  'score': [B, T]}: per head t, the task's logits (padded to K = 3 with
  -1e9) and the STS-B score (0 for classification heads).

  The embedding, input positions, encoder and decoder are the
  `language_mlm` preset's (`presets.language_mlm_modules`, same parameter
  names), the decoder with Q queries: one per task, or (token modes) the
  MLM decoder's L position queries read at the P prefix tokens. With
  `model.arch='transformer'` they are the byte Transformer's
  (`byte_transformer.modules`) and the heads read its final states at the
  P prefix (CLS) tokens.
  """
  seq_len = config.data.seq_len
  tasks, mode = tuple(tasks_of(config)), config.model.mode
  n_prefix = num_prefix_tokens(config)
  transformer = config.model.arch == 'transformer'
  if transformer:
    d_model = config.model.transformer.d_model
    overrides = mlm.transformer_overrides(config)
  else:
    d_model = config.model.d_model
    overrides = mlm.preset_overrides(config)
  if mode in ('shared_token', 'task_tokens'):
    num_queries, points = seq_len, np.arange(n_prefix)
  else:
    num_queries, points = len(tasks), None

  def forward(batch, *, is_training):
    inputs_BL = batch['inputs']
    validation.check_shape('inputs', inputs_BL, (None, seq_len))
    batch_size = inputs_BL.shape[0]
    if transformer:
      embed, position_encoding, encoder = byte_transformer.modules(**overrides)
    else:
      embed, position_encoding, encoder, decoder = presets.language_mlm_modules(
        num_queries=num_queries, **overrides
      )
    x_BLC = embed(inputs_BL)
    if mode == 'task_tokens':
      tokens_TC = P.TrainablePositionEncoding(
        len(tasks), d_model, init_scale=0.02, name='task_tokens'
      )(batch_size=None)
      x_BLC = x_BLC.at[:, : len(tasks)].set(tokens_TC[None])
    x_BLC = x_BLC + position_encoding(batch_size=batch_size)
    if transformer:
      h_BLC = encoder(
        x_BLC, is_training=is_training, input_mask=batch['input_mask']
      )
      out_BQE = h_BLC[:, :n_prefix]  # [B, P, C]: the states at the CLS tokens
    else:
      out_BQE = P.Perceiver(encoder=encoder, decoder=decoder)(
        x_BLC,
        is_training=is_training,
        input_mask=batch['input_mask'],
        subsampled_output_points=points,
      )
    logits, scores = [], []
    for t, task in enumerate(tasks):
      q = 0 if mode == 'shared_token' else t
      y_BN = TaskHead(
        glue_data.num_outputs(task),
        d_model,
        name='head_' + task.lower().replace('-', ''),
      )(out_BQE[:, q])
      if glue_data.TASKS[task].labels is None:
        scores.append(y_BN[:, 0])
        logits.append(jnp.zeros((batch_size, glue_data.MAX_CLASSES)))
      else:
        pad = glue_data.MAX_CLASSES - y_BN.shape[1]
        logits.append(jnp.pad(y_BN, ((0, 0), (0, pad)), constant_values=-1e9))
        scores.append(jnp.zeros((batch_size,)))
    return {'logits': jnp.stack(logits, 1), 'score': jnp.stack(scores, 1)}

  return hk.transform_with_state(forward)


def build_forward(config) -> hk.TransformedWithState:
  """The model of a run's config, for `perceiver.train.restore` (see
  `make_forward`)."""
  return make_forward(config)


def _head_slot(tasks: Sequence[str]) -> np.ndarray:
  """[num GLUE tasks] int32: global task id -> head index (0 if absent)."""
  slot = np.zeros(len(glue_data.TASK_NAMES), np.int32)
  for t, task in enumerate(tasks):
    slot[glue_data.TASK_NAMES.index(task)] = t
  return slot


def predictions(outputs, batch, *, tasks: Sequence[str]):
  """Each example's own head: (logits [B, K], predicted score [B], is_reg)."""
  slot_B = jnp.asarray(_head_slot(tasks))[batch['task']]
  logits_BK = jnp.take_along_axis(outputs['logits'], slot_B[:, None, None], 1)[
    :, 0
  ]
  score_B = jnp.take_along_axis(outputs['score'], slot_B[:, None], 1)[:, 0]
  return logits_BK, score_B, batch['task'] == STSB_ID


def per_example(outputs, batch, *, tasks: Sequence[str]):
  """Cross-entropy (squared error for STS-B) and, without STS-B, accuracy."""
  logits_BK, score_B, is_reg_B = predictions(outputs, batch, tasks=tasks)
  logp_BK = jax.nn.log_softmax(logits_BK)
  ce_B = -jnp.take_along_axis(logp_BK, batch['label'][:, None], 1)[:, 0]
  se_B = jnp.square(score_B - batch['score'])
  out = {'loss': jnp.where(is_reg_B, se_B, ce_B)}
  if 'STS-B' not in tasks:
    correct_B = jnp.argmax(logits_BK, -1) == batch['label']
    out['accuracy'] = correct_B.astype(jnp.float32)
  return out


# ---------------------------------------------------------------------------
# Data, task, evaluation and the sweep.
# ---------------------------------------------------------------------------


def source(config, task: str, split: str) -> glue_data.GlueSource:
  d = config.data
  return glue_data.GlueSource(
    d.dir,
    task,
    split,
    seq_len=d.seq_len,
    num_prefix_tokens=num_prefix_tokens(config),
    truncate=d.truncate,
    skip_malformed=d.skip_malformed,
  )


def compile_task(config) -> Task:
  """The model, loss and warm start without data (`--compile_only`;
  `build_task` adds the data): `example_batch` has the records' keys, dtypes
  and shapes ([data.seq_len] bytes); `init_params` loads the encoder from
  `config.init_checkpoint` (`init_must_load`) when one is given."""
  seq_len = config.data.seq_len
  ids = np.zeros((2, seq_len), np.int32)
  return Task(
    forward=make_forward(config),
    per_example=functools.partial(per_example, tasks=tasks_of(config)),
    train_data=None,
    example_batch={
      'inputs': ids,
      'input_mask': np.ones_like(ids),
      'label': np.zeros((2,), np.int32),
      'score': np.zeros((2,), np.float32),
      'task': np.zeros((2,), np.int32),
      'index': np.zeros((2,), np.int64),
    },
    config=config,
    init_params=warm_start.init_params_hook(
      config,
      preset=mlm.released_preset(config),
      overrides=mlm.preset_overrides(config),
    ),
  )


def build_task(config, process_index: int, process_count: int) -> Task:
  """The fine-tuning model, its loss, this process's training rows, the dev
  evaluation and the warm start of the encoder from `init_checkpoint`;
  `Task.config` has `num_train` = the training examples found (a set
  `num_train` must equal it)."""
  validate(config)
  tasks = tasks_of(config)
  train_parts = [source(config, t, 'train') for t in tasks]
  sizes = [len(s) for s in train_parts]
  config = config_lib.from_data(
    config,
    {'num_train': sum(sizes)},
    where=f'{config.data.dir} for {list(tasks)}',
  )
  # Weights equal to the sizes over one period of all records: each record
  # once per epoch (examples-proportional mixing for the multitask run).
  train = text_data.MixedSource(train_parts, sizes, resolution=sum(sizes))
  if process_index == 0:
    cut = sum(s.num_truncated for s in train_parts)
    skipped = sum(s.num_skipped for s in train_parts)
    print(
      f'GLUE train: {dict(zip(tasks, sizes))}; {cut} truncated, {skipped} '
      'malformed lines skipped.',
      flush=True,
    )
    mlm.print_flops(config)
  return compile_task(config)._replace(
    train_data=data_lib.train_iterator_from_config(
      train, config, process_index, process_count
    ),
    evaluators=make_evaluators(config, process_index, process_count),
  )


def make_evaluators(
  config, process_index: int, process_count: int
) -> List[evaluation.Evaluator]:
  """One evaluator per task and dev split, then the GLUE average.

  Each is named '<TASK>' (or 'MNLI-m' / 'MNLI-mm'): its metrics are the
  paper's (`glue_data.task_metrics`, x100) and 'loss' (mean dev loss),
  logged as `eval/<name>/<metric>`; process 0 prints one line per split
  and, for one classification task, `dev accuracy: NN.N%`. With all eight
  tasks, a last evaluator named '' adds 'glue_average' (printed as `GLUE
  average: X`).
  """
  tasks = tasks_of(config)

  def predict(outputs, batch):
    logits_BK, score_B, is_reg_B = predictions(outputs, batch, tasks=tasks)
    return {
      'pred': jnp.where(is_reg_B, score_B, jnp.argmax(logits_BK, -1)),
      'truth': jnp.where(is_reg_B, batch['score'], batch['label']),
      'loss': per_example(outputs, batch, tasks=tasks)['loss'],
    }

  def reduce(task, rows):
    metrics = glue_data.task_metrics(task, rows['truth'], rows['pred'])
    return dict(metrics, loss=float(rows['loss'].mean()))

  def report(name, metrics, rows) -> str:
    shown = ', '.join(f'{k} {v:.2f}' for k, v in metrics.items() if k != 'loss')
    line = (
      f'{name} ({len(rows["pred"])} dev examples): {shown}; loss '
      f'{metrics["loss"]:.4f}'
    )
    if list(tasks) == [name] and 'accuracy' in metrics:
      line += f'\ndev accuracy: {metrics["accuracy"]:.1f}%'
    return line

  evaluators = []
  for task in tasks:
    for split in glue_data.TASKS[task].dev_splits:
      name = _SPLIT_NAMES.get(split, task)
      dev = source(config, task, split)
      evaluators.append(
        evaluation.Evaluator(
          name=name,
          data=functools.partial(
            data_lib.eval_batches_from_config,
            dev,
            config,
            process_index,
            process_count,
          ),
          predict=predict,
          reduce=functools.partial(reduce, task),
          report=functools.partial(report, name),
        )
      )
  if len(evaluators) == len(glue_data.TASK_NAMES) + 1:  # MNLI-m and -mm
    evaluators.append(
      evaluation.Evaluator(
        name='',
        combine=lambda metrics: {
          'glue_average': glue_data.glue_score(main_scores(metrics))
        },
        report=lambda m, rows: f'GLUE average: {m["glue_average"]:.2f}',
      )
    )
  return evaluators


def main_scores(results: Dict[str, float]) -> Dict[str, float]:
  """{'<TASK>' or 'MNLI-m'/'MNLI-mm': the paper's metric} from the
  evaluation's {'<name>/<metric>': value}."""
  grouped: Dict[str, Dict[str, float]] = {}
  for key, value in results.items():
    if '/' in key:
      name, metric = key.split('/')
      grouped.setdefault(name, {})[metric] = value
  return {
    name: glue_data.main_metric(
      'MNLI' if name.startswith('MNLI') else name, metrics
    )
    for name, metrics in grouped.items()
  }


LEARNING_RATES = (1e-4, 5e-5, 2e-5, 1e-5)
BATCH_SIZES = (16, 32, 64)


def sweep(
  config,
  workdir: str,
  learning_rates: Sequence[float] = LEARNING_RATES,
  batch_sizes: Sequence[int] = BATCH_SIZES,
) -> Dict[str, object]:
  """Table 13's grid for one config; the best dev score per task.

  Runs `perceiver.train.train` once per (learning rate, batch size) in
  `workdir/lr<lr>_bs<batch>` (each resumes if interrupted), evaluates the
  dev sets and keeps, per task (MNLI-m / MNLI-mm separately, as the paper's
  best-of-sweep numbers), the best main metric. Usage:

    python -c "from experiments import glue; c = glue.get_config('RTE');
      c.unlock(); c.data.dir = '/data/glue';
      c.init_checkpoint = 'language_perceiver_io_bytes.pickle';
      print(glue.sweep(c, 'runs/rte_sweep'))"

  Returns:
    {'best': {task: (score, lr, batch)}, 'runs': {run name: metrics}} and,
    when all eight tasks are present, 'glue_average' of the best scores.
  """
  best, runs = {}, {}
  for lr in learning_rates:
    for batch in batch_sizes:
      c = copy.deepcopy(config)
      c.unlock()
      c.optimizer.base_lr = lr
      c.batch_size = batch
      name = f'lr{lr:g}_bs{batch}'
      result = train_lib.train(c, build_task, os.path.join(workdir, name))
      # The final evaluation's 'eval/<name>' values, back to `<name>`.
      metrics = {k[len('eval/') :]: v for k, v in result['eval'].items()}
      runs[name] = metrics
      for task, score in main_scores(metrics).items():
        if score > best.get(task, (-np.inf,))[0]:
          best[task] = (score, lr, batch)
  out = {'best': best, 'runs': runs}
  if len(best) == len(glue_data.TASK_NAMES) + 1:  # MNLI counted twice
    out['glue_average'] = glue_data.glue_score(
      {k: v[0] for k, v in best.items()}
    )
  return out
