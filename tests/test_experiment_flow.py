"""The optical-flow experiment: config, curriculum and held-out sets, the
tiled evaluation of every set (the metrics and baselines themselves:
test_flow_metrics.py), and `:debug` trained end to end through
`perceiver.train.train` with its hooks (its evaluator: printed EPE lines,
PNGs, result.json; `Task.init_params`: a warm start from our .npz and from a
released-format pickle)."""

import contextlib
import functools
import io
import json
import os
import pickle
import re

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import flow
from experiments.data import autoflow
from experiments.data import flow as flow_data
from experiments.data import flow_metrics
from perceiver import checkpoints
from perceiver import presets
from perceiver import train as train_lib
from perceiver.train import data as data_lib
from perceiver.train import evaluation
from perceiver.train import mesh as mesh_lib

LINE = re.compile(
  r'EPE: \d+\.\d\d \(zero flow: \d+\.\d\d(, [a-z ]+: \d+\.\d\d)*\)'
)
STAGES = ('translation', 'layers', 'full')
SYNTHETIC = tuple(f'synthetic_{s}' for s in STAGES)


def test_paper_config():
  c = flow.get_config()
  assert c.batch_size == 512
  assert c.total_steps == 480 * 400_000 // 512 == 375_000
  assert (c.optimizer.name, c.optimizer.base_lr) == ('lamb', 4e-4)
  assert c.optimizer.schedule == 'constant_cosine'
  assert c.optimizer.constant_fraction == 0.0 and not c.optimizer.scale_by_batch
  assert tuple(c.model.image_size) == (368, 496)
  assert c.model.z_index_dim == 2048 and c.model.flow_scale == 20.0
  assert c.optimizer.end_lr == 0.0 and c.optimizer.warmup_steps == 0
  assert c.data.augment and not c.data.reverse_pairs
  # The engine's loader fields are kept; eval_batch_size follows the batch.
  assert {'worker_count', 'prefetch', 'skip_corrupt'} <= set(c.data)
  assert c.eval_batch_size == c.batch_size
  final = flow.get_config('final')
  assert not final.data.augment and final.data.reverse_pairs
  # The curriculum: on, ending at the paper's endpoint (AutoFlow's default
  # augmentation at full severity, the layered scene), off in :final.
  assert c.data.curriculum.enabled and not final.data.curriculum.enabled
  assert tuple(c.data.curriculum.stages) == STAGES
  assert c.data.curriculum.augment[-1] == 1.0
  assert flow.curriculum(c).stages[-1].scene == autoflow.Scene()
  for variant in ('', 'local'):
    assert flow.get_config(variant).data.num_eval >= 128


def test_every_generator_range_is_set_from_the_config():
  c = flow.get_config('debug').unlock()
  ranges = dict(
    max_layers=2,
    max_motion=4.5,
    max_rotation_deg=3.0,
    max_log_scale=0.02,
    max_shear=0.01,
    background_motion=0.25,
    texture_zoom=(1.0, 1.5),
    radii=(0.1, 0.2),
    vertices=(4, 6),
  )
  assert set(ranges) == set(autoflow.Scene._fields)
  c.data.update(ranges)
  c.data.curriculum.translation.max_motion = 1.5
  c.data.curriculum.layers.max_shear = 0.03
  c.data.curriculum.enabled = False
  assert flow._generator(c, 1).scene == autoflow.Scene(**ranges)
  c.data.curriculum.enabled = True
  stages = flow.curriculum(c).stages
  assert stages[-1].scene == autoflow.Scene(**ranges)
  assert stages[0].scene.max_motion == 1.5 and stages[0].scene.max_layers == 0
  assert stages[1].scene.max_shear == 0.03
  assert [s.reach for s in stages] == list(c.data.curriculum.reach)


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('curriculum.reach', (0.0, 0.5), 'data.curriculum.reach'),
    ('curriculum.stages', ('translation', 'other', 'full'), 'curriculum.other'),
    ('curriculum.translation.max_motion', -1.0, 'translation.max_motion'),
    ('max_layers', -1, 'data.max_layers'),
    ('texture_zoom', (2.0, 1.0), 'data.texture_zoom'),
    ('reverse_pairs', True, 'data.reverse_pairs'),
    ('block_match_window', 6, 'data.block_match_window'),
    ('block_match_radius', -1, 'data.block_match_radius'),
  ],
)
def test_bad_curriculum_and_generator_fields_name_the_field(
  field, value, match
):
  c = flow.get_config('debug').unlock()
  *parents, name = field.split('.')
  node = c.data
  for parent in parents:
    node = node[parent]
  node[name] = value
  with pytest.raises(ValueError, match=match):
    flow.validate(c)


def test_held_out_sets_per_stage_have_the_configured_sizes():
  for variant, size in (('local', 128), ('debug', 2)):
    sets = flow.held_out_sets(flow.get_config(variant))
    assert tuple(sets) == SYNTHETIC
    assert [len(pairs) for pairs in sets.values()] == [size] * 3
  c = flow.get_config('debug').unlock()
  sets = flow.held_out_sets(c)
  # Each set is drawn at its stage's scene: one translation per pair at
  # stage 0, layered motion at the last.
  first = sets['synthetic_translation'][0]['flow'].reshape(-1, 2)
  assert len(np.unique(first, axis=0)) == 1
  last = sets['synthetic_full'][1]['flow'].reshape(-1, 2)
  assert len(np.unique(last, axis=0)) > 1
  c.data.curriculum.enabled = False
  c.data.num_eval = 3
  assert {k: len(v) for k, v in flow.held_out_sets(c).items()} == {
    'synthetic': 3
  }


def test_training_ops_at_the_start_give_translations_unaugmented():
  """Through the engine's ops at `Progress` 0: the source's scene indices
  are rendered at stage 0 (one global translation of at most 3 px in
  :local) with the augmentation's severity 0 (no colour change: the frames
  are the generator's, up to the unscaled flips)."""
  c = flow.get_config('local').unlock()
  c.data.erase_prob = 0.5
  source = flow.train_source(c)
  ops = flow.train_ops(c)
  assert isinstance(ops[0], data_lib.Map)
  stage0 = flow.curriculum(c).stages[0].scene
  generator = flow._generator(c, c.num_train)
  for index in range(3):
    record = dict(source[index])
    record.update({'_step': np.int64(0), '_fraction': np.float64(0.0)})
    rng = np.random.default_rng(index)
    for op in ops:
      record = (
        op.map(record)
        if isinstance(op, data_lib.Map)
        else (op.random_map(record, rng))
      )
    flow_vectors = np.unique(record['flow'].reshape(-1, 2), axis=0)
    assert len(flow_vectors) == 1 and np.abs(flow_vectors).max() <= 3.0
    direct = generator.render(index, stage0)
    frames = [direct['frame1'], direct['frame1'][:, ::-1]]
    frames += [f[::-1] for f in frames]
    assert any(np.array_equal(record['frame1'], f) for f in frames)


def test_unknown_variant_and_missing_dir_are_errors():
  with pytest.raises(ValueError, match='variant'):
    flow.get_config('fast')
  with pytest.raises(ValueError, match='data.dir'):
    flow.validate(flow.get_config())
  c = flow.get_config('debug').unlock()
  c.data.source = 'chairs'
  c.data.dir = '/nonexistent/chairs'
  with pytest.raises(ValueError, match="data.dir.*'/nonexistent/chairs'"):
    flow.train_source(c)


@pytest.mark.parametrize(
  'field, value',
  [('num_eval', 0), ('eval_tile_batch', 0), ('max_eval_pairs', -1)]
  + [('num_pngs', -1)],
)
def test_bad_eval_fields_name_the_field(field, value):
  c = flow.get_config('debug').unlock()
  c.data[field] = value
  with pytest.raises(ValueError, match=f'data.{field}'):
    flow.validate(c)


def test_forward_has_the_released_parameter_tree():
  c = flow.get_config('debug')
  batch = {
    'frame1': np.zeros((1, 48, 64, 3), np.uint8),
    'frame2': np.zeros((1, 48, 64, 3), np.uint8),
  }
  ours = jax.eval_shape(
    lambda: flow.make_forward(c.model).init(
      jax.random.PRNGKey(0), batch, is_training=True
    )
  )[0]
  net = presets.build(
    'optical_flow', **presets.overrides_from('optical_flow', c.model)
  )
  theirs = jax.eval_shape(
    lambda: net.init(
      jax.random.PRNGKey(0),
      jnp.zeros((1, 2, 48, 64, 3)),
      is_training=True,
    )
  )[0]
  assert jax.tree.map(
    lambda a: a.shape, hk.data_structures.to_mutable_dict(ours)
  ) == (
    jax.tree.map(lambda a: a.shape, hk.data_structures.to_mutable_dict(theirs))
  )


def _train(config, workdir):
  """`perceiver.train.train` of `flow.build_task`: (result, printed text)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = train_lib.train(config, flow.build_task, str(workdir))
  return result, out.getvalue()


@pytest.fixture(scope='module')
def debug_run(tmp_path_factory):
  """`:debug` trained once: (config, workdir, train result, printed text)."""
  config = flow.get_config('debug').unlock()
  config.tensorboard = config.plot_curves = False  # seconds of imports
  workdir = tmp_path_factory.mktemp('debug')
  return (config, workdir, *_train(config, workdir))


def test_debug_trains_and_the_evaluator_reports(debug_run):
  config, workdir, result, printed = debug_run
  losses = result['losses']
  assert len(losses) == config.total_steps
  assert all(np.isfinite(v) for v in losses.values())
  lines = [line for line in printed.splitlines() if LINE.search(line)]
  # Trained with the curriculum on: 4 steps at fractions 0 .. 0.75 cross
  # every stage.
  assert config.data.curriculum.enabled and config.total_steps == 4
  assert [line.split(' EPE')[0] for line in lines] == [
    f'{name} (2 pairs)' for name in SYNTHETIC
  ] + ['motorcycle (1 pairs)', 'motorcycle_down4 (1 pairs)']
  assert all('block matching: ' in line for line in lines[:3])
  with open(workdir / 'result.json') as f:
    summary = json.load(f)
  metrics = ('epe', 'zero_flow_epe', 'mean_flow_epe', 'fl_all')
  names = [
    f'eval/{s}/{m}'
    for s in SYNTHETIC + ('motorcycle', 'motorcycle_down4')
    for m in metrics
  ]
  names += [f'eval/{s}/block_matching_epe' for s in SYNTHETIC]
  assert sorted(k for k in summary if k.startswith('eval/')) == sorted(names)
  assert {k: result['eval'][k] for k in names} == {k: summary[k] for k in names}
  for set_name in SYNTHETIC + ('motorcycle',):
    for kind in ('pred', 'gt'):
      assert os.path.isfile(workdir / f'flow_{set_name}_0_{kind}.png')
  # Independent references: the held-out pairs are one tile each, so the
  # tiled EPE is the training forward's per-example EPE (every pixel is
  # valid and the pairs are of one size); zero-flow and mean-flow EPEs from
  # numpy, block matching from a direct call.
  ts = result['train_state']
  apply = jax.jit(
    functools.partial(flow.make_forward(config.model).apply, is_training=False)
  )
  for name, pairs in flow.held_out_sets(config).items():
    batch = {
      k: np.stack([pairs[i][k] for i in range(len(pairs))]) for k in pairs[0]
    }
    assert batch['valid'].all()
    pred, _ = apply(ts.params, ts.state, None, batch)
    direct = flow.per_example(pred, batch)
    np.testing.assert_allclose(
      summary[f'eval/{name}/epe'], np.mean(direct['loss']), rtol=1e-5
    )
    gt = batch['flow'].astype(np.float64)
    np.testing.assert_allclose(
      summary[f'eval/{name}/zero_flow_epe'],
      np.linalg.norm(gt, axis=-1).mean(),
      rtol=1e-6,
    )
    centred = gt - gt.mean((1, 2), keepdims=True)
    np.testing.assert_allclose(
      summary[f'eval/{name}/mean_flow_epe'],
      np.linalg.norm(centred, axis=-1).mean(),
      rtol=1e-5,
      atol=1e-6,
    )
    matched = [
      flow_metrics.block_match(p['frame1'], p['frame2'], radius=7, window=7)
      for p in (pairs[0], pairs[1])
    ]
    np.testing.assert_allclose(
      summary[f'eval/{name}/block_matching_epe'],
      np.linalg.norm(np.stack(matched) - gt, axis=-1).mean(),
      rtol=1e-5,
    )
  moto = flow_data.load_motorcycle()
  for name, factor in (('motorcycle', 1), ('motorcycle_down4', 4)):
    valid = moto['valid'][: 250 // factor * factor, : 370 // factor * factor]
    blocks = valid.reshape(250 // factor, factor, -1, factor).all((1, 3))
    u = moto['flow'][: valid.shape[0], : valid.shape[1], 0]
    u = u.reshape(250 // factor, factor, -1, factor).mean((1, 3)) / factor
    np.testing.assert_allclose(
      summary[f'eval/{name}/zero_flow_epe'], np.abs(u[blocks]).mean(), rtol=1e-5
    )


def test_conv_control_trains_and_is_scored_like_the_perceiver(tmp_path):
  config = flow.get_config('debug').unlock()
  config.tensorboard = config.plot_curves = False
  config.model.arch = 'conv'
  config.model.conv.update(width=8, dilations=(1, 2))
  config.data.motorcycle_downscales = (4,)
  config.data.block_match_radius = 0
  result, printed = _train(config, tmp_path)
  params = result['train_state'].params
  assert sorted(params) == [
    'conv_flow/conv_0',
    'conv_flow/conv_1',
    'conv_flow/flow_head',
  ]
  # Trained: the zero-initialised head moved, so the flow is not zero.
  assert np.abs(params['conv_flow/flow_head']['b']).max() > 0
  assert 'motorcycle_down4 (1 pairs) EPE' in printed
  # The tiled evaluation of a one-tile pair equals a direct call.
  ts = result['train_state']
  pairs = flow.held_out_sets(config)['synthetic_full']
  batch = {k: np.stack([pairs[0][k], pairs[1][k]]) for k in pairs[0]}
  pred, _ = flow.make_forward(config.model).apply(
    ts.params, ts.state, None, batch, is_training=False
  )
  np.testing.assert_allclose(
    result['eval']['eval/synthetic_full/epe'],
    np.mean(flow.per_example(pred, batch)['loss']),
    rtol=1e-5,
  )


def test_conv_control_refuses_a_flow_checkpoint():
  config = flow.get_config('debug').unlock()
  config.model.arch = 'conv'
  config.init_checkpoint = __file__
  with pytest.raises(ValueError, match="model.arch: expected 'perceiver'"):
    flow.validate(config)


def _evaluate(config, params, state, evaluators=None):
  """The engine's run of flow's evaluators on one device: {'<set>/<metric>'}."""
  runner = evaluation.Runner(
    flow.make_evaluators(config) if evaluators is None else evaluators,
    flow.make_forward(config.model),
    precision=None,
    mesh=mesh_lib.make_mesh(1, jax.devices()[:1]),
  )
  return {k[len('eval/') :]: v for k, v in runner(params, state, None).items()}


def test_evaluators_compute_their_baselines_once(debug_run, monkeypatch):
  config, _, result, _ = debug_run
  ts = result['train_state']
  evaluators = flow.make_evaluators(config)
  assert [e.name for e in evaluators] == list(SYNTHETIC) + [
    'motorcycle',
    'motorcycle_down4',
  ]
  first = _evaluate(config, ts.params, ts.state, evaluators)

  def fail(*args, **kwargs):
    raise AssertionError('block matching recomputed')

  monkeypatch.setattr(flow_metrics, 'block_match', fail)
  assert _evaluate(config, ts.params, ts.state, evaluators) == first
  with pytest.raises(AssertionError, match='recomputed'):
    _evaluate(config, ts.params, ts.state)  # new evaluators: a new run


def test_warm_start_from_our_npz_keeps_the_parameters(debug_run, tmp_path):
  config, _, first, _ = debug_run
  trained = jax.device_get(first['train_state'].params)
  path = str(tmp_path / 'flow.npz')
  checkpoints.save(path, trained, first['train_state'].state)
  config = config.unlock()
  config.init_checkpoint = path
  # No update at all: the run's final parameters are the loaded ones.
  config.optimizer.base_lr = 0.0
  config.optimizer.weight_decay = 0.0
  config.total_steps = 1
  second, printed = _train(config, tmp_path / 'warm')
  assert "Initialised from the task's init_params" in printed
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(second['train_state'].params),
    trained,
  )
  # The hook scores the loaded parameters: the first run's numbers.
  for name in ('synthetic_full/epe', 'motorcycle/epe'):
    assert second['eval'][f'eval/{name}'] == pytest.approx(
      first['eval'][f'eval/{name}'], rel=1e-6
    )


def test_init_checkpoint_released_pickle_and_misfit(debug_run, tmp_path):
  config, _, first, _ = debug_run
  trained = jax.device_get(first['train_state'].params)
  plain = jax.tree.map(np.asarray, hk.data_structures.to_mutable_dict(trained))
  path = str(tmp_path / 'optical_flow.pystate')
  with open(path, 'wb') as f:  # the released layout: a dict of dicts
    pickle.dump({'params': plain, 'state': {}}, f)
  config = config.unlock()
  config.init_checkpoint = path
  fresh = jax.tree.map(np.zeros_like, plain)
  params, state = flow.compile_task(config).init_params(fresh, {})
  jax.tree.map(np.testing.assert_array_equal, params, plain)
  assert state == {}
  # A checkpoint of another model size is refused, naming the parameter.
  config.model.num_z_channels = 32
  with pytest.raises(checkpoints.CheckpointError, match='mis-shaped params'):
    flow.compile_task(config).init_params(fresh, {})
  config.init_checkpoint = str(tmp_path / 'missing.npz')
  with pytest.raises(ValueError, match='init_checkpoint.*missing.npz'):
    flow.compile_task(config).init_params(fresh, {})


def _write_sintel(root, flow_HW2, frames, scene='alley_1'):
  """One MPI-Sintel pair per pass in the published layout: training/<pass>/
  <scene>/frame_0001.png and frame_0002.png, training/flow/<scene>/
  frame_0001.flo (Middlebury .flo, written by the reader's own writer)."""
  for dstype in flow_data.SINTEL_PASSES:
    os.makedirs(os.path.join(root, 'training', dstype, scene))
    for i, frame in enumerate(frames, 1):
      path = os.path.join(root, 'training', dstype, scene, f'frame_{i:04d}.png')
      Image.fromarray(frame).save(path)
  os.makedirs(os.path.join(root, 'training', 'flow', scene))
  flow_data.write_flo(
    os.path.join(root, 'training', 'flow', scene, 'frame_0001.flo'), flow_HW2
  )


def test_sintel_scores_a_known_nonzero_flow_with_its_sign_and_units(tmp_path):
  # A model whose output is known: the flow decoder's output layer with zero
  # weights and bias b predicts b / 100 (the released rescale_factor) x 20
  # (the colab's scale) pixels at every pixel, whatever the frames. Scored
  # through flow's evaluators on an MPI-Sintel pair of 60 x 100 (four tiles of
  # the 48 x 64 model, stitched) whose ground truth is that flow on the left
  # half and 2 px more in u on the right half, the EPE is 1 px; with the
  # sign, the channels or the units wrong, it is not.
  config = flow.get_config('debug').unlock()
  assert config.model.flow_scale == 20.0
  config.data.num_eval = 1
  config.data.num_pngs = 0
  config.data.eval_tile_batch = 1  # the synthetic set's, one compile
  config.data.sintel_dir = str(tmp_path / 'sintel')
  config.data.kitti_dir = str(tmp_path / 'kitti')
  u, v = 2.5, -1.25  # pixels
  flow_HW2 = np.zeros((60, 100, 2), np.float32)
  flow_HW2[..., 0], flow_HW2[..., 1] = u, v
  flow_HW2[:, 50:, 0] += 2.0
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 60, 100, 3), dtype=np.uint8)
  _write_sintel(str(tmp_path / 'sintel'), flow_HW2, frames)
  # A second scene, after alley_1 in the reader's order, with a flow no
  # figure below allows: data.max_eval_pairs=1 must leave it out.
  _write_sintel(str(tmp_path / 'sintel'), flow_HW2 + 50.0, frames, 'market_2')
  config.data.max_eval_pairs = 1
  valid_HW = np.ones((60, 100), bool)
  valid_HW[:10, :50] = False
  kitti = tmp_path / 'kitti' / 'training'
  os.makedirs(kitti / 'flow_occ')
  os.makedirs(kitti / 'image_2')
  flow_data.write_kitti_flow(
    str(kitti / 'flow_occ' / '000000_10.png'), -flow_HW2, valid_HW
  )
  for i, frame in zip((10, 11), frames):
    Image.fromarray(frame).save(kitti / 'image_2' / f'000000_{i}.png')
  batch = {'frame1': frames[:1, :48, :64], 'frame2': frames[1:, :48, :64]}
  init = functools.partial(
    flow.make_forward(config.model).init, is_training=True
  )
  params, state = jax.jit(init)(jax.random.PRNGKey(0), batch)
  params = hk.data_structures.to_mutable_dict(params)
  out = params['flow_decoder/~/basic_decoder/output']
  out['w'] = jnp.zeros_like(out['w'])
  out['b'] = jnp.array([u, v]) * 100.0 / 20.0
  results = _evaluate(config, params, state)
  zero = np.mean(np.hypot(flow_HW2[..., 0], flow_HW2[..., 1]))
  for dstype in flow_data.SINTEL_PASSES:
    assert results[f'sintel_{dstype}/epe'] == pytest.approx(1.0, abs=1e-4)
    assert results[f'sintel_{dstype}/zero_flow_epe'] == pytest.approx(zero)
    # KITTI's outlier rule (> 3 px and > 5%) is not met by errors of 2 px.
    assert results[f'sintel_{dstype}/fl_all'] == 0.0
  # KITTI 2015 (16-bit PNG flow, written by the test) with the negated
  # ground truth and no ground truth in the left half's top 10 rows: errors
  # of 2 |(u, v)| on the 2,500 valid left pixels and |(2u + 2, 2v)| on the
  # 3,000 right ones, every one a KITTI outlier.
  assert results['kitti/epe'] == pytest.approx(
    (2500 * 2 * np.hypot(u, v) + 3000 * np.hypot(2 * u + 2, 2 * v)) / 5500,
    rel=1e-5,
  )
  assert results['kitti/fl_all'] == 1.0
