"""experiments/mlm.py: `:debug` end to end, metrics, warm start, config.

Also the round trip of the MLM run's checkpoint into GLUE `:debug`
(experiments/glue.py's init_params and evaluate hooks), which shares this
file's MLM run, and the same round trip for the byte Transformer
(`model.arch='transformer'`) through `python -m experiments.main`.
"""

import contextlib
import io
import json
import os
import pickle
import re

import jax
import numpy as np
import pytest

from experiments import glue
from experiments import mlm
from experiments.data import text as text_data
from perceiver import checkpoints
from perceiver import train as train_lib
from perceiver.train import checkpoint as checkpoint_lib
from perceiver.train import warm_start
from tests import test_train_common as common

EVAL_KEYS = {
  'eval/masked_accuracy',
  'eval/bits_per_byte',
  'eval/unigram_masked_accuracy',
  'eval/unigram_bits_per_byte',
  'eval/bits_per_byte_vs_unigram',
}


def _debug_config(cache_dir, **fields):
  c = mlm.get_config('debug')
  c.unlock()
  c.data.cache_dir = str(cache_dir)
  for key, value in fields.items():
    *path, last = key.split('.')
    target = c
    for p in path:
      target = target[p]
    target[last] = value
  c.lock()
  return c


def _encoder_module(config, module):
  """Whether GLUE's `init_must_load` makes `module` load."""
  return warm_start.must_load(module, config.init_must_load)


@pytest.fixture(scope='module')
def mlm_run(tmp_path_factory):
  """One `:debug` run through the engine: (config, result, stdout, workdir).

  13 held-out records in batches of 8: the last batch is padded.
  """
  root = tmp_path_factory.mktemp('mlm')
  config = _debug_config(root / 'cache', **{'data.max_eval_records': 13})
  workdir = str(root / 'run')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = train_lib.train(config, mlm.build_task, workdir)
  return config, result, out.getvalue(), workdir


def _reference_metrics(config, params):
  """The held-out metrics computed directly: one forward over the records,
  float64 log-softmax, counts over the masked bytes."""
  held_out = mlm.sources(config, 'eval')
  train = mlm.sources(config, 'train')
  records = [
    text_data.mask_whole_words_fixed(
      held_out[i],
      seed=config.seed,
      mask_fraction=config.data.mask_fraction,
      mask_token_fraction=1.0,
      random_token_fraction=0.0,
    )
    for i in range(len(held_out))
  ]
  batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
  # Every chosen byte is MASK in the held-out inputs.
  chosen = batch['target_mask'] > 0
  assert np.all(batch['inputs'][chosen] == text_data.TOKENIZER.mask_token)
  apply = jax.jit(mlm.make_forward(config).apply, static_argnames='is_training')
  logits, _ = apply(params, {}, None, batch, is_training=False)
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  targets = batch['targets'][chosen]
  model_logp = np.take_along_axis(logp, batch['targets'][..., None], -1)[
    ..., 0
  ][chosen]
  unigram = text_data.unigram_log_probs(train, config.data.unigram_records)
  bits = -model_logp.mean() / np.log(2)
  unigram_bits = -unigram[targets].mean() / np.log(2)
  return {
    'masked_bytes': int(chosen.sum()),
    'eval/masked_accuracy': np.mean(logits.argmax(-1)[chosen] == targets),
    'eval/bits_per_byte': bits,
    'eval/unigram_masked_accuracy': np.mean(targets == unigram.argmax()),
    'eval/unigram_bits_per_byte': unigram_bits,
    'eval/bits_per_byte_vs_unigram': bits / unigram_bits,
  }


def test_debug_run_evaluates_through_the_hook(mlm_run):
  config, result, out, workdir = mlm_run
  assert len(result['losses']) == config.total_steps
  assert all(np.isfinite(v) for v in result['losses'].values())
  assert set(result['eval']) == EVAL_KEYS
  with open(os.path.join(workdir, 'result.json')) as f:
    written = json.load(f)
  assert set(written) == common.RESULT_KEYS | EVAL_KEYS
  assert {k: written[k] for k in EVAL_KEYS} == result['eval']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  assert EVAL_KEYS <= set(logged[-1]) and logged[-1]['step'] == 3
  params = jax.device_get(result['train_state'].params)
  ref = _reference_metrics(config, params)
  for key in EVAL_KEYS:
    assert result['eval'][key] == pytest.approx(ref[key], rel=1e-4), key
  # The unigram model, counted on training text, is far better than
  # uniform guessing over 256 byte values (8 bits) on held-out English.
  assert 3.0 < ref['eval/unigram_bits_per_byte'] < 6.0
  line = re.search(
    r'held-out masked bytes: (\d+); model accuracy ([\d.]+)%, ([\d.]+) '
    r'bits/byte; unigram accuracy ([\d.]+)%, ([\d.]+) bits/byte; ratio '
    r'([\d.]+)',
    out,
  )
  assert line, out
  e = result['eval']
  assert line.groups() == (
    str(ref['masked_bytes']),
    f'{100 * e["eval/masked_accuracy"]:.1f}',
    f'{e["eval/bits_per_byte"]:.3f}',
    f'{100 * e["eval/unigram_masked_accuracy"]:.1f}',
    f'{e["eval/unigram_bits_per_byte"]:.3f}',
    f'{e["eval/bits_per_byte_vs_unigram"]:.3f}',
  )


@pytest.mark.parametrize(
  'form',
  ['workdir', 'relative_workdir', 'checkpoints', 'step', 'npz', 'pickle'],
)
def test_warm_start_reads_every_checkpoint_form(
  mlm_run, tmp_path, form, monkeypatch
):
  config, result, _, workdir = mlm_run
  monkeypatch.chdir(os.path.dirname(workdir))
  params = jax.device_get(result['train_state'].params)
  path = {
    'workdir': workdir,
    # A relative path (orbax itself needs absolute ones).
    'relative_workdir': os.path.basename(workdir),
    'checkpoints': os.path.join(workdir, 'checkpoints'),
    'step': os.path.join(workdir, 'checkpoints', str(config.total_steps)),
    'npz': str(tmp_path / 'mlm.npz'),
    'pickle': str(tmp_path / 'mlm.pickle'),
  }[form]
  if form == 'npz':
    checkpoints.save(path, params)
  elif form == 'pickle':  # the released layout: a dict of numpy arrays
    with open(path, 'wb') as f:
      pickle.dump(params, f)
  loaded, _ = warm_start.load(
    path, preset='language_mlm', **mlm.preset_overrides(config)
  )
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)


def test_the_warm_start_continues_from_the_run(mlm_run, capsys):
  config, result, _, workdir = mlm_run
  params = jax.device_get(result['train_state'].params)
  config = _debug_config(config.data.cache_dir, init_checkpoint=workdir)
  fresh = jax.tree.map(np.zeros_like, params)
  got, state = mlm.compile_task(config).init_params(fresh, {})
  jax.tree.map(np.testing.assert_array_equal, got, params)
  assert state == {}
  count = sum(len(v) for v in params.values())
  assert f'{count}/{count} parameters loaded; kept fresh: none' in (
    capsys.readouterr().out
  )
  # A pickle made for another model size does not fit the preset.
  with open(workdir + '.pickle', 'wb') as f:
    pickle.dump(params, f)
  big = _debug_config(
    config.data.cache_dir, init_checkpoint=workdir + '.pickle'
  )
  big.unlock()
  big.model.d_model = 32
  with pytest.raises(checkpoints.CheckpointError, match='does not fit'):
    mlm.compile_task(big).init_params(fresh, {})
  assert (
    mlm.compile_task(_debug_config(config.data.cache_dir)).init_params is None
  )


def test_checkpoint_warm_starts_a_glue_debug_run(mlm_run, tmp_path, capsys):
  # GLUE :debug from the MLM run's workdir with a zero learning rate: the
  # final parameters are the warm start's, so every leaf the MLM has (same
  # name and shape) must equal it, and the rest are the fresh ones.
  _, mlm_result, _, mlm_workdir = mlm_run
  mlm_params = jax.device_get(mlm_result['train_state'].params)
  config = glue.get_config('debug')
  config.unlock()
  config.init_checkpoint = mlm_workdir
  config.optimizer.base_lr = 0.0
  config.optimizer.weight_decay = 0.0
  config.lock()
  workdir = str(tmp_path / 'glue')
  result = train_lib.train(config, glue.build_task, workdir)
  out = capsys.readouterr().out
  assert len(result['losses']) == config.total_steps
  params = jax.device_get(result['train_state'].params)
  fresh = []
  for module, values in params.items():
    for name, value in values.items():
      mlm_value = mlm_params.get(module, {}).get(name)
      if mlm_value is not None and mlm_value.shape == value.shape:
        np.testing.assert_array_equal(value, mlm_value)
      else:
        fresh.append(f'{module}/{name}')
  # The encoder (embed, positions, latents, cross- and self-attention) and
  # the decoder's attention load; the task query and the head stay fresh.
  assert sum(_encoder_module(config, m) for m in params) == 2 + 1 + 9 + 8
  assert fresh == [
    'basic_decoder/~/trainable_position_encoding/pos_embs',
    'head_sst2/linear/b',
    'head_sst2/linear/w',
    'head_sst2/linear_1/b',
    'head_sst2/linear_1/w',
  ]
  assert (
    f'Warm start from {mlm_workdir}: 55/60 parameters loaded; kept fresh: '
    f"{fresh}; checkpoint entries not used: ['embedding_decoder/bias']."
  ) in out
  # GLUE's evaluate hook: the dev split's line and the dev accuracy.
  accuracy = result['eval']['eval/SST-2/accuracy']
  assert set(result['eval']) == {'eval/SST-2/accuracy', 'eval/SST-2/loss'}
  assert f'SST-2 (1056 dev examples): accuracy {accuracy:.2f}' in out
  assert f'dev accuracy: {accuracy:.1f}%' in out
  with open(os.path.join(workdir, 'result.json')) as f:
    assert json.load(f)['eval/SST-2/accuracy'] == accuracy
  # Against a direct computation: one forward over every dev record (the
  # hook's batches of 64 leave a padded last batch).
  dev = glue.source(config, 'SST-2', 'dev')
  batch = {k: np.stack([dev[i][k] for i in range(len(dev))]) for k in dev[0]}
  apply = jax.jit(
    glue.make_forward(config).apply, static_argnames='is_training'
  )
  outputs, _ = apply(params, {}, None, batch, is_training=False)
  logits = np.asarray(outputs['logits'], np.float64)[:, 0, :2]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert accuracy == pytest.approx(
    100 * np.mean(logits.argmax(-1) == batch['label'])
  )
  assert result['eval']['eval/SST-2/loss'] == pytest.approx(
    -np.mean(logp[np.arange(len(dev)), batch['label']]), rel=1e-5
  )


def test_per_example_and_summarize_against_hand_counts():
  # One example, L = 3, V = 262: targets 10, 11, 12; bytes 0 and 2 masked.
  logits = np.full((1, 3, 262), -1e9, np.float32)
  logits[0, 0, 10] = logits[0, 0, 20] = 0.0  # p(target) = 1/2, argmax tie
  logits[0, 1, 11] = 0.0  # not masked: ignored
  logits[0, 2, 30] = 0.0
  logits[0, 2, 12] = np.log(1 / 3)  # p(target) = 1/4, wrong argmax
  batch = {
    'targets': np.asarray([[10, 11, 12]], np.int32),
    'target_mask': np.asarray([[1, 0, 1]], np.float32),
  }
  unigram = np.log(np.full(262, 1 / 256))
  unigram[:6] = -np.inf
  unigram[12] = np.log(2 / 256)  # the unigram argmax: byte id 12
  out = {
    k: np.asarray(v)
    for k, v in mlm.per_example(logits, batch, unigram_logp_V=unigram).items()
  }
  assert out['masked_bytes'][0] == 2
  assert out['bits'][0] == pytest.approx(1.0 + 2.0, rel=1e-5)
  assert out['loss'][0] == pytest.approx((np.log(2) + np.log(4)) / 2, rel=1e-5)
  assert out['correct'][0] == 1  # argmax picks the first of a tie: 10
  assert out['unigram_correct'][0] == 1
  assert out['unigram_bits'][0] == pytest.approx(8.0 + 7.0, rel=1e-5)
  m = mlm.summarize({k: float(v.sum()) for k, v in out.items()})
  assert m['bits_per_byte'] == pytest.approx(1.5, rel=1e-5)
  assert m['unigram_bits_per_byte'] == pytest.approx(7.5, rel=1e-5)
  assert m['bits_per_byte_vs_unigram'] == pytest.approx(0.2, rel=1e-5)


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('data.dir', '/no/such/corpus', 'data.dir'),
    ('data.mask_fraction', 1.5, 'data.mask_fraction'),
    ('model.embed_init_scale', 0.0, 'model.embed_init_scale'),
    ('model.num_heads', 0, 'model.num_heads'),
    ('model.arch', 'bert', 'model.arch'),
    ('model.transformer.num_layers', 0, 'model.transformer.num_layers'),
    (
      'model.transformer.num_heads',
      3,
      'model.transformer.d_model=16 must be divisible by '
      'model.transformer.num_heads=3',
    ),
  ],
)
def test_validate_rejects_bad_fields(tmp_path, field, value, match):
  config = _debug_config(tmp_path, **{field: value})
  with pytest.raises(ValueError, match=match):
    mlm.validate(config)


def test_paper_config():
  c = mlm.get_config()
  assert (c.batch_size, c.total_steps, c.data.seq_len) == (2048, 500_000, 2048)
  assert (c.data.docs_per_sequence, c.data.mask_fraction) == (10, 0.15)
  o = c.optimizer
  assert (o.name, o.base_lr, o.warmup_steps, o.weight_decay) == (
    'lamb',
    1.25e-3,
    1000,
    0.01,
  )
  assert o.schedule == 'warmup_cosine' and not o.scale_by_batch
  # The engine's loader fields are kept beside the corpus fields.
  assert {'worker_count', 'prefetch', 'skip_corrupt', 'dir'} <= set(c.data)
  with pytest.raises(ValueError, match='variant'):
    mlm.get_config('huge')


# ---------------------------------------------------------------------------
# The byte Transformer baseline (model.arch='transformer').
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def transformer_runs(tmp_path_factory):
  """MLM `:debug` and then GLUE `:debug` warm-started from it, both with
  the Transformer, through `python -m experiments.main`; GLUE with a zero
  learning rate, so its final parameters are the warm start's.

  Returns (MLM workdir, MLM stdout, GLUE workdir, GLUE stdout).
  """
  root = tmp_path_factory.mktemp('transformer')
  mlm_dir, glue_dir = str(root / 'mlm'), str(root / 'glue')
  proc = common.run_main(
    '--config=experiments/mlm.py:debug',
    f'--workdir={mlm_dir}',
    '--config.model.arch=transformer',
    f'--config.data.cache_dir={root / "cache"}',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  glue_proc = common.run_main(
    '--config=experiments/glue.py:debug',
    f'--workdir={glue_dir}',
    '--config.model.arch=transformer',
    f'--config.init_checkpoint={mlm_dir}',
    '--config.optimizer.base_lr=0.0',
    '--config.optimizer.weight_decay=0.0',
  )
  assert glue_proc.returncode == 0, glue_proc.stderr[-3000:]
  return mlm_dir, proc.stdout, glue_dir, glue_proc.stdout


def test_transformer_debug_mlm_trains_through_main(transformer_runs):
  mlm_dir, out, _, _ = transformer_runs
  with open(os.path.join(mlm_dir, 'result.json')) as f:
    result = json.load(f)
  assert result['step'] == 3 and EVAL_KEYS <= set(result)
  with open(os.path.join(mlm_dir, 'metrics.jsonl')) as f:
    losses = [json.loads(x).get('loss') for x in f]
  assert sum(np.isfinite(v) for v in losses if v is not None) == 3
  params, _ = checkpoint_lib.load_variables(mlm_dir)
  assert 'byte_transformer_encoder/self_attention_1/mlp/linear' in params
  assert not any(m.startswith('perceiver_encoder') for m in params)
  assert re.search(
    r'MLM forward GFLOPs per 64-byte example: perceiver [\d.e-]+, '
    r'transformer [\d.e-]+ \(ratio [\d.]+\); this run: transformer\.',
    out,
  ), out


def test_glue_warm_starts_the_transformer_encoder(transformer_runs):
  mlm_dir, _, glue_dir, out = transformer_runs
  mlm_params, _ = checkpoint_lib.load_variables(mlm_dir)
  params, _ = checkpoint_lib.load_variables(glue_dir)
  encoder = [m for m in params if _encoder_module(glue.get_config(), m)]
  # embed, positions, 2 layers x 8 modules, the final LayerNorm.
  assert len(encoder) == 2 + 2 * 8 + 1
  for module in encoder:
    for name, value in params[module].items():
      np.testing.assert_array_equal(value, mlm_params[module][name])
  assert sorted(set(params) - set(encoder)) == [
    'head_sst2/linear',
    'head_sst2/linear_1',
  ]
  assert "kept fresh: ['head_sst2/linear/b', 'head_sst2/linear/w', " in out
  assert "checkpoint entries not used: ['embedding_decoder/bias']" in out
  assert re.search(r'dev accuracy: [\d.]+%', out), out


def test_the_warm_start_refuses_the_released_pickle_for_the_transformer(
  tmp_path,
):
  path = tmp_path / 'language_perceiver_io_bytes.pickle'
  path.write_bytes(b'')
  config = _debug_config(
    tmp_path, **{'model.arch': 'transformer', 'init_checkpoint': str(path)}
  )
  with pytest.raises(ValueError, match='no released checkpoint fits'):
    mlm.compile_task(config)


def test_forward_flops_match_table_1_and_the_local_sizes_are_matched():
  c = mlm.get_config()
  flops = mlm.forward_flops(c)
  # The Transformer by hand (matmuls, multiplies and adds apart): per layer
  # the 4 C^2 projections and 8 C^2 MLP per byte and the two M x M x C
  # attention products; then the tied logits. XLA also counts the
  # element-wise work: a little above.
  t = c.model.transformer
  m, d, layers = c.data.seq_len, t.d_model, t.num_layers
  by_hand = layers * (2 * m * 12 * d * d + 4 * m * m * d) + 2 * m * d * 262
  assert 1.0 < flops['transformer'] / by_hand < 1.02
  # Table 1: 130 B (Transformer) and 113 B (Perceiver IO).
  assert flops['transformer'] == pytest.approx(130e9, rel=0.02)
  assert flops['perceiver'] == pytest.approx(113e9, rel=0.1)
  # `:local`'s Transformer (4 x 128 over 32 bytes), by hand as above, and
  # the 1.5 x the Perceiver's FLOPs its docstring states.
  c = mlm.get_config('local')
  local = mlm.forward_flops(c)
  t = c.model.transformer
  m, d, layers = c.data.seq_len, t.d_model, t.num_layers
  by_hand = layers * (2 * m * 12 * d * d + 4 * m * m * d) + 2 * m * d * 262
  # (the element-wise work weighs more at width 128: 2% here)
  assert 1.0 < local['transformer'] / by_hand < 1.03
  assert local['transformer'] / local['perceiver'] == pytest.approx(
    0.0557 / 0.0369, rel=0.01
  )
