"""experiments/imagenet.py: config A, MixUp/CutMix, metrics, data, and the
`:debug` variant end-to-end through `perceiver.train.train`."""

import contextlib
import copy
import functools
import io
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import imagenet
from perceiver import checkpoints
from perceiver import presets
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import optim
from perceiver.train import restore as restore_lib
from perceiver.train import train
from tests import test_train_common as common

TENCH, GOLDFISH = 'n01440764', 'n01443537'  # labels 0 and 1


def _override(config, **fields):
  """A copy of a locked config with dotted fields replaced (the total_steps
  expression kept)."""
  config = copy.deepcopy(config)
  config.unlock()
  for name, value in fields.items():
    *path, last = name.split('.')
    node = config
    for part in path:
      node = node[part]
    node[last] = value
  return config


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def _debug_model():
  """The :debug config with the label space its data (Fashion-MNIST) has."""
  return _override(imagenet.get_config('debug'), **{'model.num_classes': 10})


def test_config_a():
  c = imagenet.get_config()
  assert c.batch_size == 1024 and c.epochs == 110
  assert c.num_train is None and c.model.num_classes is None  # from the data
  # What ImageNet's reader counts gives the paper's schedule.
  found = {'num_train': 1_281_167, 'model.num_classes': 1000}
  c = config_lib.from_data(c, found, where='ImageNet')
  assert c.total_steps == 1_281_167 * 110 // 1024 == 137_625
  # And Fashion-MNIST's 60,000 the documented 4,687 steps of 128.
  fm = config_lib.from_data(
    imagenet.get_config('fashion_mnist'), {'num_train': 60_000}, where='FM'
  )
  assert fm.total_steps == 10 * 60_000 // 128 == 4687
  o = c.optimizer
  assert (o.name, o.b1, o.b2, o.eps) == ('lamb', 0.9, 0.999, 1e-6)
  assert (o.base_lr, o.schedule, o.constant_fraction) == (
    5e-4,
    'constant_cosine',
    0.5,
  )
  assert (o.weight_decay, o.clip_norm, o.warmup_steps) == (0.1, 10.0, 0)
  assert o.decay_pos_embs
  schedule = optim.make_schedule(o, c.batch_size, c.total_steps)
  # 2e-3 for the first half, then cosine: 1e-3 at 75%, 0 at the end.
  for step, lr in ((0, 2e-3), (68_812, 2e-3), (103_219, 1e-3), (137_625, 0)):
    assert float(schedule(step)) == pytest.approx(lr, abs=2e-7)
  d = c.data
  assert (d.format, d.dir, d.image_size, d.crop_padding) == (
    'imagefolder',
    '',
    224,
    32,
  )
  assert (d.randaugment_layers, d.randaugment_magnitude) == (4, 5.0)
  assert (d.randaugment_cutout, d.randaugment_translate) == (40, 100)
  assert d.randaugment_fill == 128
  assert (d.mixup_alpha, d.cutmix, d.label_smoothing) == (0.2, True, 0.1)
  assert tuple(d.crop_area) == (0.08, 1.0) and d.crop_attempts == 10
  assert (c.init_checkpoint, c.eval_only) == ('', False)


@pytest.mark.parametrize(
  'arg,preset',
  [
    ('', 'imagenet_fourier'),
    ('fourier', 'imagenet_fourier'),
    ('conv', 'imagenet_conv'),
    ('learned', 'imagenet_learned'),
    ('fashion_mnist', 'imagenet_conv'),
    ('fashion_mnist,fourier', 'imagenet_fourier'),
    ('learned,debug', 'imagenet_learned'),
  ],
)
def test_variants_use_presets(arg, preset):
  c = imagenet.get_config(arg)
  assert c.model.preset == preset
  if not arg or arg in imagenet.ARCHITECTURES:
    expected = presets.defaults(preset)
    for name in imagenet._MODEL_FIELDS:
      if name != 'num_classes':  # None: from the data
        assert c.model[name] == expected[name], name


@pytest.mark.parametrize(
  'arg,match',
  [
    ('tiny', 'config: expected variants of imagenet among'),
    ('conv,learned', 'config: expected at most one of'),
    ('debug,fashion_mnist', 'config: expected at most one of'),
  ],
)
def test_bad_variant(arg, match):
  with pytest.raises(ValueError, match=match):
    imagenet.get_config(arg)


@pytest.mark.parametrize(
  'fields,match',
  [
    ({'data.format': 'imagefolder'}, 'data.dir: expected the imagefolder'),
    ({'data.format': 'zip'}, 'data.format: expected one of'),
    ({'model.num_classes': 1000}, 'model.num_classes: expected 10'),
    ({'data.randaugment_magnitude': 11.0}, 'randaugment_magnitude'),
    ({'data.crop_area': (0.5, 0.2)}, r'data.crop_area: expected \(min, max\)'),
    ({'data.label_smoothing': 1.0}, 'data.label_smoothing'),
    ({'data.mixup_alpha': -0.1}, 'data.mixup_alpha'),
    ({'data.image_size': 18}, 'multiple of 4 for the conv stem'),
  ],
)
def test_validate(fields, match):
  config = _override(imagenet.get_config('fashion_mnist'), **fields)
  with pytest.raises(ValueError, match=match):
    imagenet.validate(config)


# ---------------------------------------------------------------------------
# MixUp / CutMix, forward, metrics
# ---------------------------------------------------------------------------


def test_per_example_top_k():
  # Label 2 ranks 1st, 4th and 7th in the three rows.
  logits = np.asarray(
    [
      [0, 1, 9, 2, 3, 4, 5],
      [6, 5, 4, 3, 2, 1, 0],
      [6, 5, 0, 4, 3, 2, 1],
    ],
    np.float32,
  )
  rows = np.arange(3)
  labels = np.asarray([2, 3, 2])  # ranks: 1st, 4th, 7th
  targets = np.full((3, 7), 0.1 / 7, np.float32)
  targets[rows, labels] += 0.9
  out = imagenet.per_example(
    {'logits': jnp.asarray(logits), 'targets': jnp.asarray(targets)},
    {'label': jnp.asarray(labels)},
  )
  np.testing.assert_array_equal(out['top1'], [1, 0, 0])
  np.testing.assert_array_equal(out['top5'], [1, 1, 0])
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(out['loss'], -(targets * log_p).sum(-1), rtol=1e-5)


def test_forward_targets_train_and_eval():
  config = _debug_model()
  forward = imagenet.make_forward(config)
  batch = {
    'image': np.random.default_rng(0).normal(size=(4, 16, 16, 3)),
    'label': np.asarray([0, 1, 2, 3], np.int32),
  }
  batch['image'] = batch['image'].astype(np.float32)
  init = jax.jit(functools.partial(forward.init, is_training=True))
  params, state = init(jax.random.PRNGKey(0), batch)
  evaluate = jax.jit(functools.partial(forward.apply, is_training=False))
  out, _ = evaluate(params, state, None, batch)
  assert out['logits'].shape == (4, 10)
  np.testing.assert_array_equal(out['targets'], np.eye(10)[batch['label']])
  step = jax.jit(functools.partial(forward.apply, is_training=True))
  out, _ = step(params, state, jax.random.PRNGKey(1), batch)
  targets = np.asarray(out['targets'])
  np.testing.assert_allclose(targets.sum(-1), 1, atol=1e-6)
  assert targets.min() == pytest.approx(0.1 / 10)  # smoothed after mixing
  # The model's parameter tree is the preset's (released checkpoints load).
  model = presets.build(
    'imagenet_fourier',
    image_size=16,
    **{k: config.model[k] for k in imagenet._MODEL_FIELDS},
  )
  expected, _ = jax.eval_shape(
    functools.partial(model.init, is_training=True),
    jax.random.PRNGKey(0),
    batch['image'],
  )
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, expected)


# ---------------------------------------------------------------------------
# Data, preview grid, initial checkpoint
# ---------------------------------------------------------------------------


def _jpeg_tree(root, counts):
  rng = np.random.default_rng(0)
  for split, per_class in counts.items():
    for wnid in (TENCH, GOLDFISH):
      folder = os.path.join(root, split, wnid)
      os.makedirs(folder)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f'{i}.JPEG'))


def _imagefolder_debug(root, **fields):
  return _override(
    imagenet.get_config('debug'),
    **{
      'data.format': 'imagefolder',
      'data.dir': str(root),
      'model.num_classes': 1000,
      **fields,
    },
  )


def test_imagefolder_task_batches(tmp_path):
  _jpeg_tree(str(tmp_path), {'train': 4, 'val': 3})
  config = _imagefolder_debug(
    tmp_path, num_train=8, batch_size=4, eval_batch_size=4
  )
  task = imagenet.build_task(config, 0, 1)
  batch = next(task.train_data)
  assert batch['image'].shape == (4, 16, 16, 3)
  assert batch['image'].dtype == np.float32
  assert set(batch['label'].tolist()) <= {0, 1}
  assert [e.name for e in task.evaluators] == ['']
  _, evaluation, _ = imagenet.make_sources(config)
  evals = list(imagenet.eval_batches(config, evaluation, 0, 1))
  assert [b['image'].shape for b in evals] == [(4, 16, 16, 3)] * 2
  assert [b['label'].tolist() for b in evals] == [[0, 0, 0, 1], [1, 1, 0, 0]]
  assert [b[data_lib.EVAL_MASK].tolist() for b in evals] == [
    [1] * 4,
    [1, 1, 0, 0],
  ]
  bad = _override(config, num_train=1000)
  with pytest.raises(
    ValueError, match=r'^num_train: expected 8 \(found in .*train\), got 1000'
  ):
    imagenet.build_task(bad, 0, 1)
  # The synset tree keeps the released 1,000-class space when unset.
  unset = _override(config, **{'model.num_classes': None})
  assert imagenet.build_task(unset, 0, 1).config.model.num_classes == 1000
  bad = _override(config, **{'model.num_classes': 2})
  with pytest.raises(
    ValueError, match=r'^model.num_classes: expected 1000 \(found in .*train'
  ):
    imagenet.build_task(bad, 0, 1)


@pytest.mark.parametrize('kind', ['npz', 'pickle'])
def test_warm_start_from_a_file(tmp_path, kind, capsys):
  config = _debug_model()
  model = imagenet.build_model(config)
  init = jax.jit(functools.partial(model.init, is_training=True))
  params, state = init(
    jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32)
  )
  if kind == 'npz':
    path = str(tmp_path / 'ours.npz')
    checkpoints.save(path, params, state)
  else:  # a released-style pickle: a dict of module dicts of numpy arrays
    path = str(tmp_path / 'released.pystate')
    with open(path, 'wb') as f:
      pickle.dump(jax.tree.map(np.asarray, params), f)
  config = _override(config, init_checkpoint=path)
  imagenet.validate(config)
  fresh = jax.tree.map(np.zeros_like, jax.device_get((params, state)))
  loaded, _ = imagenet.compile_task(config).init_params(*fresh)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  assert 'kept fresh: none' in capsys.readouterr().out


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------


def _debug_config(**fields):
  return _override(
    imagenet.get_config('debug'),
    progress_bar=False,
    tensorboard=False,
    plot_curves=False,
    **fields,
  )


def _train_printing(config, workdir):
  """`train(...)` and what it printed."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    out = train(config, imagenet.build_task, workdir)
  return out, printed.getvalue()


@pytest.fixture(scope='module')
def debug_run(tmp_path_factory):
  """A :debug run (8 steps) through the engine: (config, workdir, result,
  printed text)."""
  config = _debug_config()
  workdir = str(tmp_path_factory.mktemp('debug'))
  return (config, workdir, *_train_printing(config, workdir))


def test_debug_trains_end_to_end(debug_run):
  config, workdir, out, printed = debug_run
  losses = list(out['losses'].values())
  assert len(losses) == 8  # 1 epoch x 256 images // batch 32
  assert np.all(np.isfinite(losses))
  # The top-1 over the 100 eval images (batches of 64 + 36, padded) equals
  # the final model's on all 100 at once, computed here.
  ts = out['train_state']
  _, evaluation, config = imagenet.make_sources(config)
  forward = imagenet.make_forward(config)
  records = []
  for index in range(len(evaluation)):
    record = evaluation[index]
    for op in imagenet.eval_ops(config.data):
      record = op.fn(record, **op.kwargs)
    records.append(record)
  batch = {k: np.stack([r[k] for r in records]) for k in ('image', 'label')}
  apply = jax.jit(functools.partial(forward.apply, is_training=False))
  logits = np.asarray(apply(ts.params, ts.state, None, batch)[0]['logits'])
  rank = (logits > logits[np.arange(100), batch['label']][:, None]).sum(-1)
  top1, top5 = np.mean(rank == 0), np.mean(rank < 5)
  assert len(evaluation) == 100
  assert out['eval']['eval/top1'] == pytest.approx(top1, abs=1e-6)
  assert out['eval']['eval/top5'] == pytest.approx(top5, abs=1e-6)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  loss = -np.mean(log_p[np.arange(100), batch['label']])
  assert out['eval']['eval/loss'] == pytest.approx(loss, rel=1e-4)
  line = (
    f'top-1 accuracy: {100 * top1:.1f}% (top-5 {100 * top5:.1f}%) on 100 '
    'images\n'
  )
  assert printed.count(line) == 1  # eval_every=0: at the end only
  with open(os.path.join(workdir, 'result.json')) as f:
    result = json.load(f)
  assert set(result) == common.RESULT_KEYS | {
    'eval/top1',
    'eval/top5',
    'eval/loss',
  }
  assert 0 < result['perf/goodput'] <= 1
  assert result['eval/top1'] == pytest.approx(top1, abs=1e-6)
  # 8 examples of 16 x 16 enlarged 6x (to >= 96 px), 2-pixel gaps.
  preview = Image.open(os.path.join(workdir, imagenet.PREVIEW_FILE))
  assert preview.size == (2 + 8 * (6 * 16 + 2), 2 + 6 * 16 + 2)


@pytest.mark.parametrize('kind', ['npz', 'workdir'])
def test_eval_only_from_init_checkpoint(debug_run, tmp_path, kind):
  config, workdir, trained, _ = debug_run
  if kind == 'npz':
    path = str(tmp_path / 'debug.npz')
    ts = jax.device_get(trained['train_state'])
    checkpoints.save(path, ts.params, ts.state)
  else:
    path = workdir  # its latest checkpoint (the last step)
  config = _override(config, eval_only=True, init_checkpoint=path)
  evaldir = tmp_path / 'eval'
  evaldir.mkdir()
  # An existing grid is kept (it is written once).
  (evaldir / imagenet.PREVIEW_FILE).write_bytes(b'kept')
  out, printed = _train_printing(config, str(evaldir))
  assert out['losses'] == {}
  assert out['eval'] == pytest.approx(trained['eval'], abs=1e-6)
  top1, top5 = out['eval']['eval/top1'], out['eval']['eval/top5']
  assert (
    f'top-1 accuracy: {100 * top1:.1f}% (top-5 {100 * top5:.1f}%)' in printed
  )
  assert (evaldir / imagenet.PREVIEW_FILE).read_bytes() == b'kept'
  assert os.listdir(evaldir / 'checkpoints') == []


def test_init_checkpoint_directory_without_checkpoint(tmp_path):
  config = _debug_config(init_checkpoint=str(tmp_path))
  imagenet.validate(config)
  with pytest.raises(
    ValueError, match=r'init_checkpoint: .*no complete checkpoint'
  ):
    imagenet.compile_task(config).init_params({}, {})


def test_any_class_names_train_with_the_size_and_classes_found(tmp_path):
  # Made-up classes, written out of order, PNG and JPEG: sorted, ant is 0,
  # moth 1, zebra 2 (K = 3); 3 + 1 + 2 = 6 training images.
  rng = np.random.default_rng(0)
  for split, counts in (('train', (2, 1, 3)), ('val', (1, 1, 1))):
    for name, count, suffix in zip(
      ('ant', 'moth', 'zebra'),
      counts,
      (
        'png',
        'jpg',
        'JPEG',
      ),
    ):
      folder = tmp_path / split / name
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (18, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f'{i}.{suffix}')
  config = _debug_config(
    epochs=2,
    batch_size=2,
    eval_batch_size=2,
    **{
      'data.format': 'imagefolder',
      'data.dir': str(tmp_path),
      'data.preview_examples': 0,
    },
  )
  train_source, evaluation, used = imagenet.make_sources(config)
  assert train_source.labels.tolist() == [0, 0, 1, 2, 2, 2]
  assert evaluation.labels.tolist() == [0, 1, 2]
  workdir = str(tmp_path / 'run')
  out, printed = _train_printing(config, workdir)
  assert len(out['losses']) == 6  # 2 epochs x 6 images // batch 2
  assert (
    'Training data: num_train=6 (counted in the data), model.num_classes=3 '
    '(found in the data); total_steps=6 = epochs 2 x num_train 6 // '
    'batch_size 2.'
  ) in printed
  assert 'on 3 images' in printed  # the evaluation of the val split
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert (saved['num_train'], saved['total_steps']) == (6, 6)
  assert saved['model']['num_classes'] == 3
  # The workdir rebuilds a 3-way classifier.
  forward, params, state, _ = restore_lib.restore(workdir)
  images = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  logits, _ = jax.eval_shape(
    functools.partial(forward.apply, is_training=False),
    params,
    state,
    None,
    images,
  )
  assert logits.shape == (1, 3)
  # A validation class the training split lacks is refused, naming it.
  (tmp_path / 'val' / 'emu').mkdir()
  with pytest.raises(ValueError, match=r"^data.dir: .*\['emu'\]"):
    imagenet.make_sources(config)
