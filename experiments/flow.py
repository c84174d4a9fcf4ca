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

Curriculum (`data.curriculum`, on in `get_config()`, `:local` and `:debug`).
AutoFlow trains with "AutoFlow's default curriculum that increases
augmentation severity over time" and then a final phase without
augmentation; neither its generator nor that schedule is published, so the
schedule here is OURS (`experiments/data/autoflow.Curriculum`): named stages,
each reached at a fraction of training (`data.curriculum.reach`), the
generator's ranges and the augmentation severity linear in the fraction
between them (the ops see the engine's `data.Progress`):
  `translation` (reached at 0): the background alone, one global
      translation per pair (no rotation, scaling, shear, occlusion), sharp
      textures (zoom 0.75-1.25), augmentation severity 0;
  `layers`: up to 2 polygons moving by translations only over a moving
      background (occlusions), textures zoom 0.75-1.75, severity 0.5;
  `full` (the last stage): the AutoFlow-style layered scene of the
      `data.*` generator ranges (rotation, scaling, shear, up to
      `data.max_layers` polygons), AutoFlow's default augmentation ranges
      (severity 1).
The severity multiplies the colour jitter, erasing and scaling/stretching
ranges and probabilities (flips are not scaled). With `data.source` a
dataset (AutoFlow's release, FlyingChairs) only the severity follows the
curriculum. `data.curriculum.enabled=False` gives the fixed `data.*` scene
and full-strength augmentation all run long.

Departure from the paper, forced by the engine's data contract:
- The paper's last phase (augmentation off, every pair fed forward and
  reversed) is a separate run, `:final`, started from the main run's
  parameters: `--config.init_checkpoint=<its workdir, an .npz of
  perceiver.checkpoints.save or the released pickle>`.

Evaluation (`make_evaluators`, one evaluator per set, every `eval_every`
steps and at the end) is tiled at any image size
(`perceiver.tasks.optical_flow`): held-out procedural pairs per curriculum
stage, the real Middlebury motorcycle pair (`experiments/data/SOURCE.md`),
MPI-Sintel clean/final and KITTI 2015 when their directories are set. Process
0 prints one line per set with the baselines of the same evaluation (zero
flow, the per-pair mean flow, an oracle, and block matching on the
procedural sets):

  synthetic_full (128 pairs) EPE: N.NN (zero flow: N.NN, mean flow: N.NN,
    block matching: N.NN), Fl-all: P.P%

and writes colour-wheel PNGs (`flow_<set>_<i>_{pred,gt}.png`); the values
land in metrics.jsonl and result.json as `eval/<set>/<metric>`. The paper
reports EPE 1.81 (Sintel clean), 2.42 (final), 4.98 (KITTI). Score a
checkpoint (ours or the released one) without training:
`--config.init_checkpoint=PATH --config.eval_only=True`.

`--config.model.arch=conv` trains and evaluates, the same way, a plain
convolutional network instead (`perceiver.conv_flow`, not from the paper:
the control that tells a data or training problem from the Perceiver's own;
`model.conv` sizes it).

Variants:
  `:local`  procedural AutoFlow-style pairs textured with real photographs
            (`experiments/data/autoflow.py`) at 48 x 64 and a small model,
            for a CPU run of at most 30 minutes (the result is in
            docs/results/flow.md); the same curriculum at CPU scale
            (motions of +-3 px in `translation`, +-6 px after), 128
            held-out pairs per stage, a learning rate constant for 70%
            of the steps and then decayed by cosine, and the motorcycle
            pair also at 1/4 size (disparities of 1.0-7.5 px, within the
            training motions).
  `:debug`  a tiny model and a few steps (seconds; tests).
  `:final`  the paper's augmentation-off, reversed-pairs phase.
"""

import functools
from typing import Any, Dict, List, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.data import autoflow
from experiments.data import flow as flow_data
from experiments.data import flow_augment
from experiments.data import flow_metrics
from perceiver import conv_flow
from perceiver import presets
from perceiver import tasks
from perceiver import validation
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import evaluation
from perceiver.train import warm_start
from perceiver.train.task import Task

# Shapes: B batch, H, W frame size (the model's tile size), 2 frames or flow
# channels (u along x, v along y, pixels).

TRAIN_SIZE = (368, 496)
SOURCES = ('procedural', 'autoflow', 'chairs')
VARIANTS = ('', 'final', 'local', 'debug')
# model.arch: the paper's Perceiver IO, or the convolutional control.
ARCHS = ('perceiver', 'conv')


def _scene(**ranges) -> Dict[str, Any]:
  """Every `autoflow.Scene` field, the defaults updated by `ranges`."""
  return {**autoflow.Scene()._asdict(), **ranges}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The paper's recipe; `arg` picks a variant ('final', 'local', 'debug').

  The curriculum (`data.curriculum`, see the module docstring) is ours:
  AutoFlow's schedule is not published. In `get_config()` its endpoint is
  the paper's: AutoFlow's default augmentation ranges (and, for procedural
  pairs, the layered scene at 368 x 496); `:final` turns it off (the
  paper's augmentation-off phase); `:local` runs the same stages at CPU
  scale.
  """
  arg = config_lib.variant(arg, VARIANTS, what='flow')
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
  # Evaluation: one tiled evaluator per set (`make_evaluators`); 0 = at the
  # end only. Each evaluation scores `data.num_eval` synthetic pairs per
  # curriculum stage, the motorcycle pair and, when their directories are
  # set, the first `data.max_eval_pairs` pairs of each Sintel pass and of
  # KITTI (all 1,041 + 1,041 + 200 with 0: 13,692 tiles), so set
  # `data.max_eval_pairs` with `eval_every`. The block-matching baseline is
  # computed once per run (cost: docs/results/flow.md;
  # `data.block_match_radius=0` skips it).
  c.eval_every = 0
  # Unused (no batches-kind evaluator), but the engine checks it against the
  # device count, so it follows the batch size (a multiple of it).
  c.eval_batch_size = c.get_ref('batch_size')
  # init_checkpoint: the released .pystate/.pickle, our .npz or a workdir;
  # ':final' needs one.

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
      num_eval=128,  # held-out procedural pairs per curriculum stage
      sintel_dir='',  # MPI-Sintel root ('' = skip)
      kitti_dir='',  # KITTI 2015 root ('' = skip)
      max_eval_pairs=0,  # per Sintel pass / KITTI and evaluation; 0 = all
      eval_tile_batch=6,  # tiles per model call (6 = one Sintel frame)
      num_pngs=4,  # colour-wheel PNGs per evaluation set
      # The motorcycle stereo pair is scored at each of these 1/k sizes
      # (`flow_data.downscale`; 1: as vendored, 370 x 250, disparities
      # 3.7-29.9 px; 4: 92 x 62, 1.0-7.5 px).
      motorcycle_downscales=(1,),
      reverse_pairs=False,  # feed every pair also reversed
      augment=True,
      # The procedural generator's ranges (`autoflow.Scene`; used with
      # data.source='procedural'): every pair's with the curriculum off,
      # the curriculum's last stage with it on.
      **_scene(),
      # Our difficulty schedule (AutoFlow's is unpublished; see the module
      # docstring): `stages` in order, each reached at its `reach` fraction
      # of training with augmentation severity `augment`; every stage but
      # the last has its own generator ranges under its name, the last is
      # the `data.*` ranges above.
      curriculum=dict(
        enabled=True,
        stages=('translation', 'layers', 'full'),
        reach=(0.0, 0.3, 0.6),
        augment=(0.0, 0.5, 1.0),
        translation=_scene(
          max_layers=0,
          max_motion=10.0,
          max_rotation_deg=0.0,
          max_log_scale=0.0,
          max_shear=0.0,
          background_motion=1.0,
          texture_zoom=(0.75, 1.25),
        ),
        layers=_scene(
          max_layers=2,
          max_rotation_deg=0.0,
          max_log_scale=0.0,
          max_shear=0.0,
          texture_zoom=(0.75, 1.75),
        ),
      ),
      # The block-matching baseline of the procedural held-out sets: search
      # radius (px per axis; 0: not computed) and window side (pixels, odd).
      block_match_radius=7,
      block_match_window=7,
      # RAFT's augmentation (FlowAugmentor) with AutoFlow's default ranges:
      # the strength at curriculum severity 1 (all run long with the
      # curriculum off).
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
  c.model.arch = (
    'perceiver'  # or 'conv' (`perceiver.conv_flow`, not the paper's)
  )
  c.model.conv = ml_collections.ConfigDict(
    {k: v for k, v in conv_flow.DEFAULTS.items() if k != 'image_size'}
  )

  if arg == 'final':
    # Perceiver IO App. H: a last phase with augmentation off and each pair
    # fed forward and reversed, from the main phase's parameters
    # (`--config.init_checkpoint`). Its length and learning rate are not in
    # the paper: 10% of the main phase, the same cosine from 4e-4 here.
    c.data.augment = False
    c.data.reverse_pairs = True
    c.data.curriculum.enabled = False
    c.total_steps = 37_500
  elif arg in ('local', 'debug'):
    # 5,000 steps of 8 pairs rendered at the training size (no scaling),
    # sized for 30 minutes on the 2-core machine (docs/results/flow.md).
    c.data.source = 'procedural'
    c.batch_size = 8
    c.num_train = 4000
    c.epochs = 10
    c.log_every = 50
    c.checkpoint_every = 500
    # An evaluation: 3 x 128 synthetic pairs + the motorcycle's 72 tiles
    # (its cost: docs/results/flow.md).
    c.eval_every = 500
    c.optimizer.name = 'adamw'
    c.optimizer.base_lr = 1e-3
    # Constant for 70% of the steps, then cosine to 0: learning starts after
    # a plateau at zero flow, by which time a cosine from step 0 has largely
    # decayed; the late decay lowers the held-out EPEs (docs/results/flow.md).
    c.optimizer.schedule = 'constant_cosine'
    c.optimizer.constant_fraction = 0.7
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_norm = 1.0
    c.model.image_size = (48, 64)
    c.model.z_index_dim = 64
    c.model.num_z_channels = 64
    c.model.num_self_attends_per_block = 4
    c.model.num_self_attend_heads = 4
    c.model.num_bands = 8
    # 3,072 inputs: the unchunked cross-attention is faster here (train
    # step 4-7% shorter, side by side; docs/results/flow.md).
    c.model.cross_attention_impl = 'reference'
    # The conv control at 13 GFLOP per training step, as the Perceiver.
    c.model.conv.width = 40
    c.data.max_motion = 6.0
    c.data.max_layers = 3
    c.data.curriculum.translation.max_motion = 3.0
    c.data.curriculum.layers.max_motion = 6.0
    c.data.spatial_prob = 0.0
    c.data.erase_prob = 0.0
    c.data.num_eval = 128  # per curriculum stage
    c.data.eval_tile_batch = 36  # the motorcycle pair is 72 tiles of 48 x 64
    c.data.num_pngs = 2
    # 1/4 size: the pair's disparities (1.0-7.5 px) within the training
    # motions (max_motion 6 px plus the layers' own affine motion).
    c.data.motorcycle_downscales = (1, 4)
  if arg == 'debug':
    c.num_train = 16
    c.epochs = 1
    c.batch_size = 4
    config_lib.quick_test(c)
    c.checkpoint_every = 2
    c.eval_every = 0  # at the end only
    c.model.update(presets.tiny('optical_flow', num_bands=4))
    c.data.num_eval = 2
    c.data.num_pngs = 1
    # One tile per call: a single compiled shape for every set (compiling,
    # not computing, is what a debug evaluation costs).
    c.data.eval_tile_batch = 1
  c.lock()
  return c


# ---------------------------------------------------------------------------
# Model and loss.
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _conv_net(image_size, width, dilations, output_scale):
  """One `conv_flow.build` per size, so evaluations reuse its compilations."""
  return conv_flow.build(
    image_size=image_size,
    width=width,
    dilations=dilations,
    output_scale=output_scale,
  )


def network(model: ml_collections.ConfigDict):
  """(the flow network of `model.arch`, its `perceiver.tasks` overrides).

  'perceiver': the `optical_flow` preset (`presets.overrides_from`); 'conv': the
  plain convolutional control (`perceiver.conv_flow`, `model.conv` sizes).
  Both take frames [B, 2, H, W, 3] in [-1, 1] and return pixels.
  """
  validation.check_choice('model.arch', model.arch, ARCHS)
  overrides = presets.overrides_from('optical_flow', model)
  if model.arch == 'perceiver':
    return presets.build('optical_flow', **overrides), overrides
  net = _conv_net(
    overrides['image_size'],
    model.conv.width,
    tuple(model.conv.dilations),
    float(model.conv.output_scale),
  )
  return net, {'image_size': overrides['image_size']}


def make_forward(model: ml_collections.ConfigDict) -> hk.TransformedWithState:
  """The network, called on a batch {'frame1', 'frame2': uint8 [B, H, W,
  3]} -> flow float32 [B, H, W, 2] in pixels.

  With `model.arch='perceiver'` the parameter tree is the preset's (so
  released checkpoints load as they are); frames are scaled to [-1, 1] as
  the colab does.
  """
  net, _ = network(model)

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
  """The loss: the average end-point error over each example's valid
  pixels, [B] (`flow_metrics.epe_per_example`).

  Returns 'loss' (= 'epe'), 'zero_flow_epe' (the EPE of predicting no
  motion) and 'fl' (KITTI's outlier share), each float32 [B].
  """
  metrics = flow_metrics.epe_per_example(
    flow_pred, batch['flow'], batch['valid']
  )
  return {'loss': metrics['epe'], **metrics}


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


def _ranges(fields, name: str) -> autoflow.Scene:
  """The checked `autoflow.Scene` of a config's fields (errors name them
  `<name>.<field>`)."""
  return autoflow.make_scene(
    name, **{k: fields[k] for k in autoflow.Scene._fields}
  )


def _generator(config, num: int) -> autoflow.AutoFlowGenerator:
  return autoflow.AutoFlowGenerator(
    num,
    size=tuple(config.model.image_size),
    seed=config.seed,
    **_ranges(config.data, 'data')._asdict(),
  )


def curriculum(config) -> Optional[autoflow.Curriculum]:
  """The schedule of `config.data.curriculum` (None when it is off).

  Raises:
    ValueError: naming the field: `reach` / `augment` not one value per
      stage, a stage without its ranges, bad ranges or fractions.
  """
  c = config.data.curriculum
  if not c.enabled:
    return None
  names = tuple(c.stages)
  for field in ('reach', 'augment'):
    if len(c[field]) != len(names):
      raise ValueError(
        f'data.curriculum.{field}: expected one value per stage of '
        f'{names}, got {tuple(c[field])}.'
      )
  stages = []
  for k, name in enumerate(names):
    if k == len(names) - 1:
      scene = _ranges(config.data, 'data')
    elif name in c and isinstance(c[name], ml_collections.ConfigDict):
      scene = _ranges(c[name], f'data.curriculum.{name}')
    else:
      raise ValueError(
        f'data.curriculum.{name}: expected the generator ranges of stage '
        f'{name!r} (the fields of autoflow.Scene), got none.'
      )
    stages.append(
      autoflow.Stage(name, float(c.reach[k]), scene, float(c.augment[k]))
    )
  return autoflow.Curriculum(stages)


def train_source(config):
  """The training pairs of `config.data.source`; procedural pairs under a
  curriculum are scene indices, rendered by the first of `train_ops`."""
  d = config.data
  if d.source == 'procedural' and curriculum(config) is not None:
    source = autoflow.SceneIndices(config.num_train)
  elif d.source == 'procedural':
    source = autoflow.GeneratorSlice(
      _generator(config, config.num_train), start=0, num_pairs=config.num_train
    )
  elif d.source == 'autoflow':
    source = flow_data.AutoFlowSource(d.dir, arg_name='data.dir')
  else:
    source = flow_data.FlyingChairsSource(d.dir, arg_name='data.dir')
  if d.reverse_pairs:
    source = flow_data.ReversedPairs(source)
  return source


def held_out_sets(config) -> Dict[str, autoflow.GeneratorSlice]:
  """Set name -> `data.num_eval` procedural pairs after the training
  indices: one set per curriculum stage, `synthetic_<stage>` at the stage's
  scene, or `synthetic` at the `data.*` scene with the curriculum off."""
  n, start = config.data.num_eval, config.num_train
  generator = _generator(config, start + n)
  schedule = curriculum(config)
  if schedule is None:
    return {
      'synthetic': autoflow.GeneratorSlice(generator, start=start, num_pairs=n)
    }
  return {
    f'synthetic_{s.name}': autoflow.GeneratorSlice(
      generator, start=start, num_pairs=n, scene=s.scene
    )
    for s in schedule.stages
  }


def train_ops(config) -> list:
  """The per-record training ops: with a curriculum, procedural pairs are
  first rendered at the progress's scene; then RAFT's augmentation
  (`flow_augment.raft_ops`), its ranges scaled by the curriculum's
  severity; with `data.augment` off only the random crop remains."""
  d = config.data
  schedule = curriculum(config)
  crop_size = tuple(config.model.image_size)
  ops = []
  if d.source == 'procedural' and schedule is not None:
    ops.append(
      data_lib.Map(
        autoflow.render_at_progress,
        generator=_generator(config, config.num_train),
        curriculum=schedule,
      )
    )
  if not d.augment:
    return ops + [
      data_lib.RandomMap(
        flow_augment.random_scale_crop,
        spatial_prob=0.0,
        margin=0,
        crop_size=crop_size,
      )
    ]
  return ops + flow_augment.raft_ops(
    crop_size,
    severity=None if schedule is None else schedule.severity,
    **{name: d[name] for name in flow_augment.RAFT_RANGES},
  )


# ---------------------------------------------------------------------------
# Tiled evaluation at any size: one evaluator per set.
# ---------------------------------------------------------------------------


def make_evaluators(config) -> List[evaluation.Evaluator]:
  """One custom-kind evaluator per evaluation set, named after it.

  In order: the held-out procedural sets of `held_out_sets` (one tile per
  pair, so one tile per model call; scored beside the per-pair mean flow
  and, with `data.block_match_radius`, block matching), the real
  motorcycle pair at each of `data.motorcycle_downscales` ('motorcycle',
  'motorcycle_down<f>'; beside the mean flow), then the first
  `data.max_eval_pairs` (0: all) pairs of MPI-Sintel clean and final
  ('sintel_clean', 'sintel_final') and of KITTI 2015 ('kitti') when their
  directories are set (`data.eval_tile_batch` tiles per model call). Each
  pair goes through `perceiver.tasks.optical_flow` (tiles of the model's
  size, min overlap 20, pyramid-weighted stitching; smaller frames are
  edge-padded) with the cached preset, so repeated evaluations compile
  nothing new. An evaluator's metrics are `flow_metrics.evaluate_pairs`'s
  (logged as `eval/<set>/epe`, `eval/<set>/zero_flow_epe`,
  `eval/<set>/fl_all`, `eval/<set>/<baseline>_epe`), its report that
  function's line, its artifacts the set's colour-wheel PNGs (the first
  `data.num_pngs` pairs). The baselines' EPEs are computed at its first
  evaluation and kept (the evaluators of one call belong to one run). The
  engine runs them on every process with the parameters copied there: not
  batches-kind evaluators, since each pair is tiled at its own size.
  """
  d = config.data
  if config.model.arch == 'perceiver':  # the cached preset of `tasks`
    net = 'optical_flow'
    overrides = presets.overrides_from(net, config.model)
  else:
    net, overrides = network(config.model)

  def evaluator(name, pairs, tile_batch, baselines, limit=0):
    n = len(pairs) if not limit else min(limit, len(pairs))
    first = lambda: (pairs[i] for i in range(n))
    memo = {}  # 'compared': the baselines' EPEs, from the first evaluation

    def run(params, state):
      if 'compared' not in memo:
        memo['compared'] = flow_metrics.baseline_epes(first(), baselines)
      predict = functools.partial(
        tasks.optical_flow,
        net,
        params,
        state,
        batch_size=tile_batch,
        overrides=overrides,
      )
      lines, pngs = [], {}
      metrics = flow_metrics.evaluate_pairs(
        predict,
        first(),
        name,
        compared=memo['compared'],
        pngs=pngs,
        num_pngs=d.num_pngs,
        say=lines.append,
      )
      return dict(metrics=metrics, line=lines[0], pngs=pngs)

    return evaluation.Evaluator(
      name=name,
      run=run,
      reduce=lambda rows: rows['metrics'],
      report=lambda metrics, rows: rows['line'],
      artifacts=lambda metrics, rows, workdir: flow_metrics.write_pngs(
        rows['pngs'], workdir
      ),
    )

  oracle = dict(mean_flow=flow_metrics.mean_flow)
  synthetic = dict(oracle)
  if d.block_match_radius:
    synthetic['block_matching'] = lambda r: flow_metrics.block_match(
      r['frame1'],
      r['frame2'],
      radius=d.block_match_radius,
      window=d.block_match_window,
    )
  out = [
    evaluator(name, pairs, 1, synthetic)
    for name, pairs in held_out_sets(config).items()
  ]
  for factor in d.motorcycle_downscales:
    name = 'motorcycle' if factor == 1 else f'motorcycle_down{factor}'
    pair = flow_data.downscale(flow_data.load_motorcycle(), factor)
    out.append(evaluator(name, [pair], d.eval_tile_batch, oracle))
  if d.sintel_dir:
    for dstype in flow_data.SINTEL_PASSES:
      source = flow_data.SintelSource(
        d.sintel_dir, dstype=dstype, arg_name='data.sintel_dir'
      )
      out.append(
        evaluator(
          f'sintel_{dstype}',
          source,
          d.eval_tile_batch,
          oracle,
          d.max_eval_pairs,
        )
      )
  if d.kitti_dir:
    source = flow_data.KittiSource(d.kitti_dir, arg_name='data.kitti_dir')
    out.append(
      evaluator('kitti', source, d.eval_tile_batch, oracle, d.max_eval_pairs)
    )
  return out


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
  _ranges(d, 'data')
  if curriculum(config) is not None:
    if d.reverse_pairs and d.source == 'procedural':
      raise ValueError(
        'data.reverse_pairs: expected False with procedural pairs under a '
        'curriculum (the pairs are rendered by an op), got True; turn '
        'data.curriculum.enabled off (as :final does).'
      )
  radius, window = d.block_match_radius, d.block_match_window
  if radius < 0:
    raise ValueError(
      f'data.block_match_radius: expected an integer >= 0, got {radius!r}.'
    )
  if window < 1 or window % 2 == 0:
    raise ValueError(
      f'data.block_match_window: expected an odd integer >= 1, got {window!r}.'
    )
  for name in ('num_eval', 'eval_tile_batch'):
    validation.check_positive(f'data.{name}', d[name])
  for factor in d.motorcycle_downscales:
    validation.check_positive('data.motorcycle_downscales', factor)
  validation.check_choice('model.arch', config.model.arch, ARCHS)
  if config.init_checkpoint and config.model.arch != 'perceiver':
    raise ValueError(
      "model.arch: expected 'perceiver' with init_checkpoint (checkpoints "
      f'hold the flow preset), got {config.model.arch!r}.'
    )
  for name in ('max_eval_pairs', 'num_pngs'):
    if d[name] < 0:  # ConfigDict keeps them integers
      raise ValueError(
        f'data.{name}: expected a non-negative integer, got {d[name]!r}.'
      )


def compile_task(config) -> Task:
  """The model, EPE loss and warm start without data (`--compile_only`;
  `build_task` adds the data): `example_batch` has the training pairs'
  keys, dtypes and shapes (the model's `image_size`); `init_params` loads
  `config.init_checkpoint` (`perceiver.train.warm_start`) when one is
  given."""
  height, width = config.model.image_size
  return Task(
    forward=make_forward(config.model),
    per_example=per_example,
    train_data=None,
    example_batch={
      'frame1': np.zeros((2, height, width, 3), np.uint8),
      'frame2': np.zeros((2, height, width, 3), np.uint8),
      'flow': np.zeros((2, height, width, 2), np.float32),
      'valid': np.ones((2, height, width), bool),
    },
    init_params=warm_start.init_params_hook(
      config,
      preset='optical_flow',
      overrides=presets.overrides_from('optical_flow', config.model),
    ),
  )


def build_task(config, process_index: int, process_count: int) -> Task:
  """Model, EPE loss, this process's training pairs and the hooks.

  `Task.evaluators` is `make_evaluators` (one per set: the held-out
  procedural sets first); `Task.init_params` is `compile_task`'s.
  """
  validate(config)
  return compile_task(config)._replace(
    train_data=data_lib.train_iterator_from_config(
      train_source(config),
      config,
      process_index,
      process_count,
      ops=train_ops(config),
    ),
    evaluators=make_evaluators(config),
  )
