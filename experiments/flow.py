"""python -m experiments.main --config=experiments/flow.py:local --workdir=runs/flow

Optical flow with Perceiver IO (Sec. 4.2, App. H; the released flow colab): the
`optical_flow` preset (3 x 3 patches of both frames, concatenated, projected
to 64 channels with 2-D Fourier features, 2048 x 512 latents, 24
self-attention layers, the inputs themselves as output queries, output / 100
x 20), trained with the average end-point error (EPE).

`get_config()` is the paper's recipe: LAMB, a cosine schedule from 4e-4,
batch 512, 480 epochs over 400,000 AutoFlow pairs (375,000 steps; only
40,000 AutoFlow pairs are public: `data.source='autoflow'` with `data.dir`
the unpacked release), RAFT/AutoFlow augmentation (random scaling and
stretching, crop to 368 x 496, colour jitter, erasing, flips). Where the
paper is silent (warm-up, weight decay, clipping, the end of the cosine, the
final phase's length) the choice is commented in `get_config`.

Departures from the paper, both forced by the engine's data contract:
- AutoFlow's augmentation curriculum is NOT implemented: the augmentation
  ops get only (record, rng), never the step or epoch, so every pair is
  augmented at one fixed strength (AutoFlow's default ranges) all run long.
- The paper's last phase (augmentation off, every pair fed forward and
  reversed) is a separate run, `:final`, started from the main run's
  parameters: `--config.init_checkpoint=<.npz of perceiver.checkpoints.save
  or the released pickle>`.

Evaluation (`Task.evaluate`, every `eval_every` steps and at the end) is
tiled (overlapping tiles of the model's size, min overlap 20, pyramid
weights; `perceiver.tasks.optical_flow`) at any image size: held-out
procedural pairs, the real Middlebury motorcycle pair
(`experiments/data/SOURCE.md`), MPI-Sintel clean/final (`data.sintel_dir`)
and KITTI 2015 (`data.kitti_dir`). Process 0 prints one line per set,

  synthetic (16 pairs) EPE: N.NN (zero flow: N.NN), Fl-all: P.P%
  motorcycle (1 pairs) EPE: N.NN (zero flow: N.NN), Fl-all: P.P%

writes colour-wheel PNGs of the first `data.num_pngs` pairs of each set to
the workdir (`flow_<set>_<i>_{pred,gt}.png`, overwritten by each
evaluation) and the values land in metrics.jsonl and result.json as
`eval/<set>/{epe,zero_flow_epe,fl_all}`. With `eval_every`, bound each
evaluation's cost with `data.num_eval` and `data.max_eval_pairs`. The
paper reports EPE 1.81 (Sintel clean), 2.42 (final), 4.98 (KITTI).
Score a checkpoint (ours or the released one) without training:
`--config.init_checkpoint=PATH --config.eval_only=True`.

Variants:
  `:local`  procedural AutoFlow-style pairs textured with real photographs
            (`experiments/data/autoflow.py`) at 48 x 64 and a small model,
            for a CPU run of at most 30 minutes (the result is in docs/results/flow.md).
  `:debug`  a tiny model and a few steps (seconds; tests).
  `:final`  the paper's augmentation-off, reversed-pairs phase.
"""

import functools
import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from absl import logging
import haiku as hk
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.data import autoflow
from experiments.data import flow as flow_data
from experiments.data import flow_augment
from perceiver import checkpoints
from perceiver import presets
from perceiver import tasks
from perceiver import validation
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train.task import Task

# Shapes: B batch, H, W frame size (the model's tile size), 2 frames or flow
# channels (u along x, v along y, pixels).

TRAIN_SIZE = (368, 496)
SOURCES = ('procedural', 'autoflow', 'chairs')
VARIANTS = ('', 'final', 'local', 'debug')
# KITTI's outlier: end-point error > 3 px and > 5% of the true flow's length.
FL_ABS_PX, FL_REL = 3.0, 0.05
_EPS = 1e-12  # under the EPE's square root: a finite gradient at zero error


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The paper's recipe; `arg` picks a variant ('final', 'local', 'debug')."""
  if arg not in VARIANTS:
    raise ValueError(
      f'config: expected a variant among {VARIANTS}, got {arg!r}.'
    )
  c = config_lib.base_config()
  c.seed = 0
  c.batch_size = 512
  c.num_train = 400_000  # AutoFlow pairs per epoch (Perceiver IO, App. H)
  c.epochs = 480
  c.total_steps = (
    c.get_ref('epochs') * c.get_ref('num_train') // c.get_ref('batch_size')
  )
  c.log_every = 100
  c.checkpoint_every = 5000
  # Evaluation is `Task.evaluate` (tiled, any size; see `evaluate`): 0 = at
  # the end only. Each evaluation scores `data.num_eval` synthetic pairs, the
  # motorcycle pair and, when their directories are set, the first
  # `data.max_eval_pairs` pairs of each Sintel pass and of KITTI (all 1,041 +
  # 1,041 + 200 with 0: 13,692 tiles), so set `data.max_eval_pairs` with
  # `eval_every`.
  c.eval_every = 0
  # No `eval_data`: the engine's batch evaluation would repeat the synthetic
  # set. The engine still checks this field against the device count, so it
  # follows the batch size (a multiple of it).
  c.eval_batch_size = c.get_ref('batch_size')
  # init_checkpoint: official .pystate/.pickle or our .npz; ':final' needs one.

  c.optimizer.name = 'lamb'
  c.optimizer.base_lr = 4e-4
  c.optimizer.scale_by_batch = False
  # "A cosine schedule starting at 4e-4" (App. H): constant for 0% of the
  # steps, then cosine to `end_lr` = 0 (the end value is not in the paper).
  # No warm-up: the paper gives none for flow, and warm-up kept its LAMB
  # ImageNet models from training (App. A).
  c.optimizer.schedule = 'constant_cosine'
  c.optimizer.constant_fraction = 0.0
  c.optimizer.end_lr = 0.0
  # Not in the paper: the weight decay of the paper's other LAMB recipes
  # (MLM, GLUE), the released trainer's clipping, LAMB's moments (0.9,
  # 0.999, eps 1e-6) and decay of everything but biases and norms (as the
  # released ImageNet optimizer).
  c.optimizer.weight_decay = 0.01
  c.optimizer.clip_norm = 10.0

  c.data.update(
    dict(
      source='autoflow',  # or 'procedural' / 'chairs'
      dir='',  # the unpacked AutoFlow release / FlyingChairs root
      num_eval=16,  # held-out procedural pairs scored by each evaluation
      sintel_dir='',  # MPI-Sintel root ('' = skip)
      kitti_dir='',  # KITTI 2015 root ('' = skip)
      max_eval_pairs=0,  # per Sintel pass / KITTI and evaluation; 0 = all
      eval_tile_batch=6,  # tiles per model call (6 = one Sintel frame)
      num_pngs=4,  # colour-wheel PNGs per evaluation set
      reverse_pairs=False,  # feed every pair also reversed
      augment=True,
      # The procedural generator (experiments/data/autoflow.py).
      max_layers=4,
      max_motion=20.0,
      # RAFT's augmentation (FlowAugmentor) with AutoFlow's default ranges,
      # at one fixed strength for the whole run: AutoFlow's curriculum is
      # NOT implemented (the engine's ops see only (record, rng), not the
      # step or epoch).
      min_log2_scale=-0.2,
      max_log2_scale=0.6,
      spatial_prob=0.8,
      stretch_prob=0.8,
      max_log2_stretch=0.2,
      h_flip_prob=0.5,
      v_flip_prob=0.1,
      brightness=0.4,
      contrast=0.4,
      saturation=0.4,
      hue=0.5 / np.pi,
      asymmetric_prob=0.2,
      erase_prob=0.5,
    )
  )
  c.model = ml_collections.ConfigDict(
    {k: v for k, v in presets.defaults('optical_flow').items()}
  )
  c.model.image_size = TRAIN_SIZE

  if arg == 'final':
    # Perceiver IO App. H: a last phase with augmentation off and each pair
    # fed forward and reversed, from the main phase's parameters
    # (`--config.init_checkpoint`). Its length and learning rate are not in
    # the paper: 10% of the main phase, the same cosine from 4e-4 here.
    c.data.augment = False
    c.data.reverse_pairs = True
    c.total_steps = 37_500
  elif arg in ('local', 'debug'):
    # 2,000 steps: 9 min 5 s on the idle 2-core machine (3.7 steps/s; the
    # model did not leave zero flow, see docs/results/flow.md). Frames are rendered at
    # the training size, so no scaling.
    c.data.source = 'procedural'
    c.batch_size = 8
    c.num_train = 4000
    c.epochs = 4
    c.log_every = 50
    c.checkpoint_every = 500
    # An evaluation (16 synthetic pairs + the motorcycle's 72 tiles) took
    # 2.5 s here after its first compilation: ~1% of 500 steps.
    c.eval_every = 500
    c.optimizer.name = 'adamw'
    c.optimizer.base_lr = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_norm = 1.0
    c.model.image_size = (48, 64)
    c.model.z_index_dim = 64
    c.model.num_z_channels = 64
    c.model.num_self_attends_per_block = 4
    c.model.num_self_attend_heads = 4
    c.model.num_bands = 8
    c.data.max_motion = 6.0
    c.data.max_layers = 3
    c.data.spatial_prob = 0.0
    c.data.erase_prob = 0.0
    c.data.num_eval = 16
    c.data.eval_tile_batch = 36  # the motorcycle pair is 72 tiles of 48 x 64
    c.data.num_pngs = 2
  if arg == 'debug':
    c.num_train = 16
    c.epochs = 1
    c.batch_size = 4
    c.log_every = 1
    c.checkpoint_every = 2
    c.eval_every = 0  # at the end only
    c.model.z_index_dim = 8
    c.model.num_z_channels = 16
    c.model.num_self_attends_per_block = 1
    c.model.num_self_attend_heads = 2
    c.model.num_bands = 4
    c.data.num_eval = 2
    c.data.num_pngs = 1
    # One tile per call: a single compiled shape for every set (compiling,
    # not computing, is what a debug evaluation costs).
    c.data.eval_tile_batch = 1
  c.lock()
  return c


# ---------------------------------------------------------------------------
# Model, loss and metrics.
# ---------------------------------------------------------------------------


def model_overrides(model: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The `presets.build('optical_flow', **overrides)` of a config."""
  out = dict(model)
  out['image_size'] = tuple(model.image_size)
  return out


def make_forward(model: ml_collections.ConfigDict) -> hk.TransformedWithState:
  """The preset, called on a batch {'frame1', 'frame2': uint8 [B, H, W, 3]}
  -> flow float32 [B, H, W, 2] in pixels.

  The parameter tree is the preset's (so released checkpoints load as
  they are); frames are scaled to [-1, 1] as the colab does.
  """
  net = presets.build('optical_flow', **model_overrides(model))

  def frames(batch):
    pair = jnp.stack([batch['frame1'], batch['frame2']], axis=1)
    return pair.astype(jnp.float32) / 255.0 * 2.0 - 1.0  # [B, 2, H, W, 3]

  def init(rng, batch, *, is_training):
    return net.init(rng, frames(batch), is_training=is_training)

  def apply(params, state, rng, batch, *, is_training):
    return net.apply(params, state, rng, frames(batch), is_training=is_training)

  return hk.TransformedWithState(init=init, apply=apply)


def build_forward(config) -> hk.TransformedWithState:
  """The model of a run's config, for `perceiver.train.restore` (see
  `make_forward`)."""
  return make_forward(config.model)


def per_example(flow_pred, batch) -> Dict[str, jax.Array]:
  """Average end-point error over each example's valid pixels, [B].

  Returns 'loss' (= 'epe'), 'zero_flow_epe' (the EPE of predicting no
  motion) and 'fl' (KITTI's outlier share), each float32 [B].
  """
  valid = batch['valid'].astype(jnp.float32)  # [B, H, W]
  count = jnp.maximum(valid.sum((1, 2)), 1.0)
  gt = batch['flow'].astype(jnp.float32)
  sq = jnp.sum(jnp.square(flow_pred.astype(jnp.float32) - gt), -1)
  epe = jnp.sqrt(sq + _EPS)  # [B, H, W]
  mag = jnp.sqrt(jnp.sum(jnp.square(gt), -1))
  outlier = (epe > FL_ABS_PX) & (epe > FL_REL * mag)
  mean = lambda x: jnp.sum(x * valid, (1, 2)) / count
  loss = mean(epe)
  return {
    'loss': loss,
    'epe': loss,
    'zero_flow_epe': mean(mag),
    'fl': mean(outlier.astype(jnp.float32)),
  }


def flow_errors(pred_HW2, gt_HW2, valid_HW) -> Dict[str, float]:
  """Sums over the valid pixels of one pair, for pixel-weighted averages.

  Returns:
    {'epe': sum of |pred - gt|, 'zero': sum of |gt| (zero-flow EPE), 'fl':
    number of outliers (> 3 px and > 5%), 'count': valid pixels}.
  """
  pred = np.asarray(pred_HW2, np.float64)
  gt = np.asarray(gt_HW2, np.float64)
  if pred.shape != gt.shape:
    raise ValueError(f'pred: expected shape {gt.shape}, got {pred.shape}.')
  valid = np.asarray(valid_HW, bool)
  epe = np.linalg.norm(pred - gt, axis=-1)[valid]
  mag = np.linalg.norm(gt, axis=-1)[valid]
  return {
    'epe': float(epe.sum()),
    'zero': float(mag.sum()),
    'fl': float(((epe > FL_ABS_PX) & (epe > FL_REL * mag)).sum()),
    'count': float(valid.sum()),
  }


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


def _generator(config, num: int) -> autoflow.AutoFlowGenerator:
  return autoflow.AutoFlowGenerator(
    num,
    size=tuple(config.model.image_size),
    seed=config.seed,
    max_layers=config.data.max_layers,
    max_motion=config.data.max_motion,
  )


class _Slice:
  """Records [start, start + n) of a source (the held-out procedural pairs
  are indices after the training ones: disjoint by construction)."""

  def __init__(self, source, start: int, n: int):
    self._source, self._start, self._n = source, start, n

  def __len__(self):
    return self._n

  def __getitem__(self, index):
    if not 0 <= index < self._n:
      raise IndexError(f'index: expected [0, {self._n}), got {index}.')
    return self._source[self._start + int(index)]


def train_source(config):
  """The training pairs of `config.data.source`."""
  d = config.data
  if d.source == 'procedural':
    source = _Slice(_generator(config, config.num_train), 0, config.num_train)
  elif d.source == 'autoflow':
    source = flow_data.AutoFlowSource(d.dir, arg_name='data.dir')
  else:
    source = flow_data.FlyingChairsSource(d.dir, arg_name='data.dir')
  if d.reverse_pairs:
    source = flow_data.ReversedPairs(source)
  return source


def held_out_source(config):
  """`data.num_eval` procedural pairs after the training indices."""
  n, start = config.data.num_eval, config.num_train
  return _Slice(_generator(config, start + n), start, n)


def train_ops(config) -> list:
  """The per-record training ops (RAFT's order: colour, erase, spatial,
  flips); with `data.augment` off only the random crop remains."""
  d = config.data
  crop = dict(crop_size=tuple(config.model.image_size))
  if not d.augment:
    return [
      data_lib.RandomMap(
        flow_augment.random_scale_crop, spatial_prob=0.0, margin=0, **crop
      )
    ]
  return [
    data_lib.RandomMap(
      flow_augment.photometric_jitter,
      brightness=d.brightness,
      contrast=d.contrast,
      saturation=d.saturation,
      hue=d.hue,
      asymmetric_prob=d.asymmetric_prob,
    ),
    data_lib.RandomMap(flow_augment.random_erase, prob=d.erase_prob),
    data_lib.RandomMap(
      flow_augment.random_scale_crop,
      min_log2_scale=d.min_log2_scale,
      max_log2_scale=d.max_log2_scale,
      spatial_prob=d.spatial_prob,
      stretch_prob=d.stretch_prob,
      max_log2_stretch=d.max_log2_stretch,
      margin=0 if d.spatial_prob == 0 else 8,
      **crop,
    ),
    data_lib.RandomMap(
      flow_augment.random_flip, h_prob=d.h_flip_prob, v_prob=d.v_flip_prob
    ),
  ]


# ---------------------------------------------------------------------------
# Tiled evaluation at any size.
# ---------------------------------------------------------------------------


def evaluate_pairs(
  predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
  pairs: Iterable[Mapping[str, np.ndarray]],
  name: str,
  *,
  workdir: Optional[str] = None,
  num_pngs: int = 0,
  say: Callable[[str], None] = print,
) -> Dict[str, float]:
  """EPE (pixel-weighted over valid pixels), zero-flow EPE and Fl-all.

  Prints `<name> (<n> pairs) EPE: N.NN (zero flow: N.NN), Fl-all: P%` and
  writes `<workdir>/flow_<name>_<i>_{pred,gt}.png` (same colour scale) for
  the first `num_pngs` pairs.

  Returns:
    {'<name>/epe', '<name>/zero_flow_epe', '<name>/fl_all' (a fraction)}.
  """
  totals = dict(epe=0.0, zero=0.0, fl=0.0, count=0.0)
  n = 0
  for i, record in enumerate(pairs):
    pred = predict(record['frame1'], record['frame2'])
    for k, v in flow_errors(pred, record['flow'], record['valid']).items():
      totals[k] += v
    if workdir and i < num_pngs:
      gt = np.where(record['valid'][..., None], record['flow'], 0.0)
      scale = max(float(np.linalg.norm(gt, axis=-1).max()), 1e-6)
      base = os.path.join(workdir, f'flow_{name}_{i}')
      tasks.save_flow_png(pred, f'{base}_pred.png', max_flow=scale)
      tasks.save_flow_png(gt, f'{base}_gt.png', max_flow=scale)
    n += 1
  if not totals['count']:
    raise ValueError(f'{name}: no valid pixels to evaluate.')
  out = {
    f'{name}/epe': totals['epe'] / totals['count'],
    f'{name}/zero_flow_epe': totals['zero'] / totals['count'],
    f'{name}/fl_all': totals['fl'] / totals['count'],
  }
  say(
    f'{name} ({n} pairs) EPE: {out[f"{name}/epe"]:.2f} (zero flow: '
    f'{out[f"{name}/zero_flow_epe"]:.2f}), Fl-all: '
    f'{100 * out[f"{name}/fl_all"]:.1f}%'
  )
  return out


def _first(source, limit: int):
  n = len(source) if not limit else min(limit, len(source))
  return (source[i] for i in range(n))


def evaluate(
  config, params, state, workdir: Optional[str] = None, say=print
) -> Dict[str, float]:
  """Scores a model on every configured evaluation set, at full size.

  Each pair goes through `perceiver.tasks.optical_flow` (tiles of the
  model's size, min overlap 20, pyramid-weighted stitching; smaller frames
  are edge-padded): the `data.num_eval` held-out procedural pairs (one tile
  each, so one tile per model call), the real motorcycle pair, then the
  first `data.max_eval_pairs` (0: all) pairs of MPI-Sintel clean and final
  and of KITTI 2015 when their directories are set (`data.eval_tile_batch`
  tiles per model call). The model is the cached preset of
  `perceiver.tasks`, so repeated evaluations compile nothing new.

  Args:
    config: a config of this file.
    params, state: the model's parameters and state, usable by this process
      alone (see `_local_copy`).
    workdir: where `flow_<set>_<i>_{pred,gt}.png` go (None: no files).
    say: prints each set's `EPE: N.NN (zero flow: N.NN)` line.

  Returns:
    {'<set>/epe', '<set>/zero_flow_epe', '<set>/fl_all'} for each set
    ('synthetic', 'motorcycle', 'sintel_clean', 'sintel_final', 'kitti').
  """
  overrides = model_overrides(config.model)
  d = config.data

  def predictor(tile_batch):
    return functools.partial(
      tasks.optical_flow,
      'optical_flow',
      params,
      state,
      batch_size=tile_batch,
      overrides=overrides,
    )

  common = dict(workdir=workdir, num_pngs=d.num_pngs, say=say)
  predict = predictor(d.eval_tile_batch)
  results = {}
  results.update(
    evaluate_pairs(
      predictor(1), _first(held_out_source(config), 0), 'synthetic', **common
    )
  )
  results.update(
    evaluate_pairs(
      predict, [flow_data.load_motorcycle()], 'motorcycle', **common
    )
  )
  if d.sintel_dir:
    for dstype in flow_data.SINTEL_PASSES:
      source = flow_data.SintelSource(
        d.sintel_dir, dstype=dstype, arg_name='data.sintel_dir'
      )
      results.update(
        evaluate_pairs(
          predict,
          _first(source, d.max_eval_pairs),
          f'sintel_{dstype}',
          **common,
        )
      )
  if d.kitti_dir:
    source = flow_data.KittiSource(d.kitti_dir, arg_name='data.kitti_dir')
    results.update(
      evaluate_pairs(
        predict, _first(source, d.max_eval_pairs), 'kitti', **common
      )
    )
  return results


def _local_copy(tree):
  """`tree` with every array on this process's default device.

  With several processes the engine's arrays span devices of other
  processes, which a per-process evaluation cannot read: they are gathered
  (every process then runs the same evaluation).
  """
  if jax.process_count() == 1:
    return tree
  return jax.device_put(multihost_utils.process_allgather(tree, tiled=True))


def load_init_checkpoint(config) -> Tuple[Any, Any]:
  """(params, state) from `config.init_checkpoint`.

  Args:
    config: a config of this file; `init_checkpoint` is a released
      optical-flow pickle (.pystate / .pickle) or an .npz of
      `perceiver.checkpoints.save`.

  Returns:
    Host numpy (params, state) trees of the configured model, float32.

  Raises:
    ValueError: no such file; `perceiver.checkpoints.CheckpointError` (a
      ValueError) listing every missing, extra or mis-shaped entry when the
      checkpoint does not fit `config.model`.
  """
  path = config.init_checkpoint
  if not os.path.isfile(path):
    raise ValueError(
      f'init_checkpoint: expected an existing checkpoint file, got {path!r}.'
    )
  overrides = {
    k: v
    for k, v in model_overrides(config.model).items()
    if v != presets.defaults('optical_flow')[k]
  }
  if path.endswith('.npz'):
    loaded = checkpoints.load(path, 'optical_flow', **overrides)
  else:
    loaded = checkpoints.load_official(path, 'optical_flow', **overrides)
  return jax.device_get(loaded)


# ---------------------------------------------------------------------------
# The engine's entry point.
# ---------------------------------------------------------------------------


def validate(config) -> None:
  """Checks the flow-specific fields (the engine checks the rest)."""
  d = config.data
  validation.check_choice('data.source', d.source, SOURCES)
  if d.source != 'procedural' and not d.dir:
    raise ValueError(
      f'data.dir: expected the {d.source} directory for data.source='
      f'{d.source!r}, got an empty string (use :local for procedural pairs).'
    )
  size = tuple(config.model.image_size)
  if len(size) != 2 or min(size) < 8:
    raise ValueError(
      f'model.image_size: expected (H, W) of at least 8, got {size!r}.'
    )
  validation.check_positive('num_train', config.num_train)
  for name in ('num_eval', 'eval_tile_batch'):
    validation.check_positive(f'data.{name}', d[name])
  for name in ('max_eval_pairs', 'num_pngs'):
    if d[name] < 0:  # ConfigDict keeps them integers
      raise ValueError(
        f'data.{name}: expected a non-negative integer, got {d[name]!r}.'
      )
  if config.init_checkpoint and not os.path.isfile(config.init_checkpoint):
    raise ValueError(
      'init_checkpoint: expected an existing checkpoint file, got '
      f'{config.init_checkpoint!r}.'
    )


def build_task(config, process_index: int, process_count: int) -> Task:
  """Model, EPE loss, this process's training pairs and the hooks.

  `Task.evaluate` runs `evaluate` on every process (process 0 prints the
  EPE lines and writes the PNGs to the workdir); `Task.init_params` loads
  `config.init_checkpoint` when one is given. There is no `eval_data`: the
  held-out synthetic pairs are `evaluate`'s first set.
  """
  validate(config)
  train_data = data_lib.train_iterator_from_config(
    train_source(config),
    config,
    process_index,
    process_count,
    ops=train_ops(config),
  )
  held_out = held_out_source(config)
  examples = [held_out[0], held_out[min(1, len(held_out) - 1)]]
  example_batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  chief = process_index == 0

  def evaluate_hook(params, state, workdir):
    return evaluate(
      config,
      _local_copy(params),
      _local_copy(state),
      workdir if chief else None,
      say=functools.partial(print, flush=True) if chief else logging.info,
    )

  init_params = None
  if config.init_checkpoint:
    init_params = lambda params, state: load_init_checkpoint(config)
  return Task(
    forward=make_forward(config.model),
    per_example=per_example,
    train_data=train_data,
    example_batch=example_batch,
    evaluate=evaluate_hook,
    init_params=init_params,
  )
