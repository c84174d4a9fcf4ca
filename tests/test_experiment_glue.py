"""experiments/glue.py: multitask end to end, variants, warm start, config.

The `:debug` run warm-started from an MLM `:debug` run's checkpoint is in
tests/test_experiment_mlm.py (it shares that file's MLM run).
"""

import json
import os
import pickle

import haiku as hk
import jax
import numpy as np
import pytest

from experiments import glue
from experiments import mlm
from experiments.data import glue as glue_data
import perceiver as P
from perceiver import byte_transformer
from perceiver import checkpoints
from perceiver import train as train_lib
from perceiver.train import config as config_lib
from perceiver.train import warm_start
from tests import test_train_common as common

# One valid row per task in its published layout (header, row).
_ROWS = {
  'CoLA': (None, ['src', '{y}', '', 'The {w} sat.']),
  'SST-2': (['sentence', 'label'], ['a {w} film', '{y}']),
  'MRPC': (
    ['Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'],
    ['{y}', '1', '2', 'He {w}.', 'She {w}.'],
  ),
  'STS-B': (
    'index genre filename year old_index source1 source2 sentence1 '
    'sentence2 score'.split(),
    ['0', 'g', 'f', 'y', '0', 's', 's', 'A {w}.', 'The {w}.', '{s}'],
  ),
  'QQP': (
    ['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'],
    ['0', '1', '2', 'Why {w}?', 'How {w}?', '{y}'],
  ),
  'MNLI': (
    [
      'index',
      'promptID',
      'pairID',
      'genre',
      'b1',
      'b2',
      'p1',
      'p2',
      'sentence1',
      'sentence2',
      'label1',
      'gold_label',
    ],
    ['0', '1', '2', 'g', '-', '-', '-', '-', 'A {w}.', 'No {w}.', 'x', '{nli}'],
  ),
  'QNLI': (
    ['index', 'question', 'sentence', 'label'],
    ['0', 'Who {w}?', 'The {w}.', '{ent}'],
  ),
  'RTE': (
    ['index', 'sentence1', 'sentence2', 'label'],
    ['0', 'A {w} ran.', 'A {w} moved.', '{ent}'],
  ),
}


def _write_glue(root, n=8):
  words = ['cat', 'dog', 'owl', 'elk', 'ant', 'bee', 'cow', 'fox']
  nli = ('contradiction', 'entailment', 'neutral')
  ent = ('entailment', 'not_entailment')
  for task, (header, row) in _ROWS.items():
    splits = glue_data.TASKS[task].dev_splits + ('train',)
    for split in splits:
      lines = [header] if header else []
      for i in range(n):
        fill = dict(
          w=words[i % 8],
          y=i % 2,
          s=f'{i % 6}.0',
          nli=nli[i % 3],
          ent=ent[i % 2],
        )
        lines.append([f.format(**fill) for f in row])
      d = root / task
      d.mkdir(parents=True, exist_ok=True)
      (d / f'{split}.tsv').write_text(
        ''.join('\t'.join(r) + '\n' for r in lines)
      )


def _config(arg, **fields):
  c = glue.get_config(arg)
  c.unlock()
  for key, value in fields.items():
    target = c
    *path, last = key.split('.')
    for p in path:
      target = target[p]
    target[last] = value
  c.lock()
  return c


def _multitask(tmp_path, mode, arch='perceiver'):
  _write_glue(tmp_path / 'glue')
  debug = glue.get_config('debug')
  return _config(
    'multitask',
    **{
      'data.dir': str(tmp_path / 'glue'),
      'data.seq_len': 32,
      'model.mode': mode,
      'model.arch': arch,
      'model.transformer': debug.model.transformer,
      'num_train': 64,
      'batch_size': 8,
      'eval_batch_size': 8,
      'progress_bar': False,
      'tensorboard': False,
      'plot_curves': False,
      **{f'model.{k}': debug.model[k] for k in mlm.PRESET_FIELDS},
    },
  )


@pytest.mark.parametrize(
  'mode', ['shared_token', 'task_tokens', 'task_queries']
)
def test_multitask_variants_forward_and_loss(tmp_path, mode):
  config = _multitask(tmp_path, mode)
  train = [glue.source(config, t, 'train') for t in glue_data.TASK_NAMES]
  records = [s[i] for s in train for i in (0, 1)]
  batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
  prefix = glue.num_prefix_tokens(config)
  assert prefix == {'shared_token': 1, 'task_tokens': 8}.get(mode, 0)
  assert np.all(batch['inputs'][:, :prefix] == glue_data.TOKENIZER.cls_token)
  forward = glue.make_forward(config)
  params, state = forward.init(jax.random.PRNGKey(0), batch, is_training=True)
  out, _ = forward.apply(params, state, None, batch, is_training=False)
  assert out['logits'].shape == (16, 8, 3) and out['score'].shape == (16, 8)
  if mode == 'task_tokens':
    assert params['task_tokens']['pos_embs'].shape == (8, 16)
  queries = params['basic_decoder/~/trainable_position_encoding']['pos_embs']
  assert queries.shape[0] == (32 if prefix else 8)
  values = glue.per_example(out, batch, tasks=glue_data.TASK_NAMES)
  assert values['loss'].shape == (16,) and np.all(np.isfinite(values['loss']))
  # Two-class heads cannot predict the padded third class.
  two = glue_data.TASK_NAMES.index('RTE')
  assert np.all(np.asarray(out['logits'])[:, two, 2] < -1e8)


def test_multitask_trains_and_reports_glue_average(tmp_path, capsys):
  config = _multitask(tmp_path, 'task_queries')
  config.unlock()
  config.total_steps = 2
  config.lock()
  workdir = str(tmp_path / 'run')
  result = train_lib.train(config, glue.build_task, workdir)
  out = capsys.readouterr().out
  m = {k[len('eval/') :]: v for k, v in result['eval'].items()}
  names = [t for t in glue_data.TASK_NAMES if t != 'MNLI']
  names += ['MNLI-m', 'MNLI-mm']
  metrics = {'CoLA': ('accuracy', 'matthews'), 'STS-B': ('pearson', 'spearman')}
  metrics.update(MRPC=('accuracy', 'f1'), QQP=('accuracy', 'f1'))
  expected = {'glue_average'} | {
    f'{n}/{k}' for n in names for k in metrics.get(n, ('accuracy',)) + ('loss',)
  }
  assert set(m) == expected
  with open(os.path.join(workdir, 'result.json')) as f:
    assert set(json.load(f)) == common.RESULT_KEYS | {
      f'eval/{k}' for k in expected
    }
  # The paper's average: MNLI-m and MNLI-mm averaged first (Table 14).
  average = np.mean(
    [
      m['CoLA/matthews'],
      m['SST-2/accuracy'],
      m['MRPC/accuracy'],
      m['STS-B/pearson'],
      m['QQP/accuracy'],
      (m['MNLI-m/accuracy'] + m['MNLI-mm/accuracy']) / 2,
      m['QNLI/accuracy'],
      m['RTE/accuracy'],
    ]
  )
  assert m['glue_average'] == pytest.approx(average)
  assert f'GLUE average: {average:.2f}' in out
  assert f'RTE (8 dev examples): accuracy {m["RTE/accuracy"]:.2f}' in out
  assert 'MNLI-mm (8 dev examples)' in out
  assert 'dev accuracy' not in out  # one task only


def test_init_checkpoint_pickle_loads_the_mlm_encoder(tmp_path, capsys):
  # A pickle in the released layout (a dict of numpy arrays) at :debug
  # size, random values.
  mlm_config = mlm.get_config('debug')
  ids = jax.ShapeDtypeStruct((1, mlm_config.data.seq_len), np.int32)
  shapes, _ = jax.eval_shape(
    lambda b: mlm.make_forward(mlm_config).init(
      jax.random.PRNGKey(3), b, is_training=True
    ),
    {'inputs': ids, 'input_mask': ids},
  )
  rng = np.random.default_rng(0)
  mlm_params = jax.tree.map(
    lambda x: rng.standard_normal(x.shape).astype(x.dtype), shapes
  )
  path = str(tmp_path / 'mlm.pickle')
  with open(path, 'wb') as f:
    pickle.dump(mlm_params, f)
  config = _config('debug', init_checkpoint=path)
  task = glue.build_task(config, 0, 1)
  fresh, _ = jax.eval_shape(
    lambda: task.forward.init(
      jax.random.PRNGKey(0), task.example_batch, is_training=True
    )
  )
  fresh = jax.tree.map(lambda x: np.full(x.shape, -7.0, x.dtype), fresh)
  params, _ = task.init_params(fresh, {})
  for module, values in params.items():
    for name, value in values.items():
      if warm_start.must_load(module, config.init_must_load):
        np.testing.assert_array_equal(value, mlm_params[module][name])
  assert np.all(params['head_sst2/linear']['w'] == -7.0)
  assert 'head_sst2/linear/w' in capsys.readouterr().out
  # An encoder leaf missing from the checkpoint is an error.
  del mlm_params['embed']
  checkpoints.save(str(tmp_path / 'partial.npz'), mlm_params)
  config = _config('debug', init_checkpoint=str(tmp_path / 'partial.npz'))
  with pytest.raises(ValueError, match=r'(?s)init_checkpoint: 1 .*embed/embed'):
    glue.build_task(config, 0, 1).init_params(fresh, {})


@pytest.mark.parametrize('mode', ['single', 'shared_token', 'task_tokens'])
def test_transformer_heads_read_the_cls_states(tmp_path, mode):
  # Against a direct computation: the byte Transformer's final states
  # (its own modules, the same parameters) at the CLS positions, through
  # each head's Linear -> tanh -> Linear in numpy.
  if mode == 'single':
    _write_glue(tmp_path / 'glue')
    config = _config(
      'RTE',
      **{
        'data.dir': str(tmp_path / 'glue'),
        'data.seq_len': 32,
        'num_train': 8,
        'model.arch': 'transformer',
        'model.transformer': glue.get_config('debug').model.transformer,
        'model.embed_init_scale': 0.02,
      },
    )
  else:
    config = _multitask(tmp_path, mode, arch='transformer')
  tasks = glue.tasks_of(config)
  parts = [glue.source(config, t, 'train') for t in tasks]
  records = [s[i] for s in parts for i in (0, 1)]
  batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
  prefix = glue.num_prefix_tokens(config)
  assert prefix == {'single': 1, 'shared_token': 1, 'task_tokens': 8}[mode]
  assert np.all(batch['inputs'][:, :prefix] == glue_data.TOKENIZER.cls_token)
  forward = glue.make_forward(config)
  params, state = forward.init(jax.random.PRNGKey(0), batch, is_training=True)
  assert not any(m.startswith(('basic_decoder', 'perceiver')) for m in params)
  out, _ = forward.apply(params, state, None, batch, is_training=False)

  def states(ids_BL, mask_BL):
    embed, positions, encoder = byte_transformer.modules(
      **mlm.transformer_overrides(config)
    )
    x_BLC = embed(ids_BL)
    if mode == 'task_tokens':
      tokens_TC = P.TrainablePositionEncoding(
        8, x_BLC.shape[-1], name='task_tokens'
      )(batch_size=None)
      x_BLC = x_BLC.at[:, :8].set(tokens_TC[None])
    x_BLC = x_BLC + positions(batch_size=ids_BL.shape[0])
    return encoder(x_BLC, is_training=False, input_mask=mask_BL)

  h_BLC = np.asarray(
    hk.transform(states).apply(
      params, None, batch['inputs'], batch['input_mask']
    ),
    np.float64,
  )
  for t, task in enumerate(tasks):
    head = 'head_' + task.lower().replace('-', '')
    w1, b1 = (params[f'{head}/linear'][k] for k in ('w', 'b'))
    w2, b2 = (params[f'{head}/linear_1'][k] for k in ('w', 'b'))
    cls_BC = h_BLC[:, t if mode == 'task_tokens' else 0]
    y_BN = np.tanh(cls_BC @ w1 + b1) @ w2 + b2
    got = np.asarray(out['score'] if task == 'STS-B' else out['logits'])[:, t]
    got = got if task == 'STS-B' else got[:, : y_BN.shape[1]]
    np.testing.assert_allclose(
      got, y_BN[:, 0] if task == 'STS-B' else y_BN, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
  'fields, match',
  [
    ({'model.mode': 'task_queries'}, 'model.mode'),
    ({'data.task': 'WNLI'}, 'data.task'),
    ({'data.dir': '/no/glue'}, 'data.dir'),
  ],
)
def test_validate_rejects_bad_fields(fields, match):
  with pytest.raises(ValueError, match=match):
    glue.validate(_config('debug', **fields))


def test_validate_refuses_decoder_queries_for_the_transformer(tmp_path):
  config = _multitask(tmp_path, 'task_queries', arch='transformer')
  with pytest.raises(ValueError, match="model.mode: .*model.arch='transf"):
    glue.validate(config)
  glue.validate(_multitask(tmp_path, 'task_tokens', arch='transformer'))


def test_recipe_and_num_train_check(tmp_path):
  c = glue.get_config('RTE')
  assert (c.optimizer.name, c.optimizer.warmup_steps) == ('lamb', 200)
  assert c.optimizer.weight_decay == 0.01 and c.epochs == 10
  assert c.num_train is None and c.total_steps is None  # from the data
  # RTE's 2,490 training examples give the paper's schedule.
  found = config_lib.from_data(c, {'num_train': 2490}, where='RTE')
  assert found.total_steps == 10 * 2490 // 32 == 778
  assert glue.LEARNING_RATES == (1e-4, 5e-5, 2e-5, 1e-5)
  assert glue.BATCH_SIZES == (16, 32, 64)
  _write_glue(tmp_path / 'glue')
  bad = _config(
    'RTE',
    **{'data.dir': str(tmp_path / 'glue'), 'data.seq_len': 64},
    batch_size=4,
  )
  task = glue.build_task(bad, 0, 1)  # 8 RTE examples: 10 x 8 // 4 = 20
  assert (task.config.num_train, task.config.total_steps) == (8, 20)
  bad.num_train = 9
  with pytest.raises(
    ValueError, match=r"^num_train: expected 8 \(found in .*\['RTE'\]\), got 9"
  ):
    glue.build_task(bad, 0, 1)
